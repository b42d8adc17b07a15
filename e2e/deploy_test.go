package e2e

// The deployment files (docker-compose.yml, the Dockerfiles, deploy/) are only
// exercised by people running Docker or Kubernetes, which this machine and CI
// do not have. These tests read them as data instead and check what would
// break a user's first `docker compose up` or `kubectl apply -k`: a missing
// file, an undocumented or misspelt variable, a service listening on
// loopback inside its container, a port published to the network, probes or
// Services aimed at the wrong port, a sign-in that Dex would refuse.
//
// Each check returns the problems it found as sentences for an operator.
// TestDeployChecksCatchMistakes makes one deliberate mistake per check in a
// freshly loaded copy and requires the check to notice, so no check can pass
// by looking at nothing.

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// deployServices are the Doorbell services: compose service names, Deployment
// names and "## <name>" sections of docs/configuration.md at once.
func deployServices() []string { return []string{"auth-gateway", "mail-worker"} }

func TestDeployFiles(t *testing.T) {
	d := loadDeployFiles(t, "..")
	for _, c := range deployChecks() {
		t.Run(c.name, func(t *testing.T) {
			for _, p := range c.check(d) {
				t.Error(p)
			}
		})
	}
}

type deployCheck struct {
	name  string
	check func(*deployFiles) []string
}

func deployChecks() []deployCheck {
	return []deployCheck{
		{"every compose service that builds has its Dockerfile", composeBuildsHaveDockerfiles},
		{"the images listen on 0.0.0.0 by default", imagesListenOnAllInterfaces},
		{"compose sets only documented variables and binds services to 0.0.0.0", composeEnvIsDocumented},
		{"compose publishes ports on 127.0.0.1 only, to ports the services listen on", composePortsOnLoopback},
		{"every file and volume compose mounts exists", composeMountsExist},
		{"compose services reach each other by names and ports that exist", composeReferencesResolve},
		{"Prometheus scrapes the services' admin ports by compose name", prometheusScrapesAdminPorts},
		{"Prometheus, Grafana and Dex find their mounted configuration", composeConfigsAreMounted},
		{"the gateway's OIDC settings match the Dex client", dexAcceptsGateway},
		{"Deployments set only documented variables and bind to 0.0.0.0", kubeEnvIsDocumented},
		{"Deployments probe /healthz and /readyz on the admin port Prometheus scrapes", kubeProbesUseAdminPort},
		{"Deployments run as non-root with a read-only root and no capabilities", kubeRunsLockedDown},
		{"ConfigMap and Secret values are strings", kubeDataIsStrings},
		{"Services target container ports of the pods they select", kubeServicesTargetContainerPorts},
		{"every *_FILE variable names a key of a mounted Secret", kubeSecretFilesAreMounted},
		{"every Deployment has a PodDisruptionBudget that lets a node drain", kubeDisruptionBudgetsAllowDrain},
		{"kustomizations list exactly the manifests beside them", kustomizationsListTheirFiles},
		{"the NATS cluster's routes, Services and replicas fit together", natsClusterIsConsistent},
		{"the mail-worker gets its shutdown budget before it is killed", workerGraceCoversShutdown},
		{"the gateway behind the ingress trusts its X-Forwarded-For", kubeGatewayTrustsItsProxies},
	}
}

func TestDeployChecksCatchMistakes(t *testing.T) {
	tests := []struct {
		name    string
		check   func(*deployFiles) []string
		mistake func(*deployFiles)
	}{
		{"a compose build names a Dockerfile that is not there", composeBuildsHaveDockerfiles, func(d *deployFiles) {
			d.compose.Services["mail-worker"].Build.Dockerfile = "services/mail-worker/Dockerfile.gone"
		}},
		{"an image leaves the worker's admin port on loopback", imagesListenOnAllInterfaces, func(d *deployFiles) {
			d.dockerfiles["mail-worker"]["WORKER_ADMIN_ADDR"] = "127.0.0.1:9102"
		}},
		{"an image does not set the gateway's admin address", imagesListenOnAllInterfaces, func(d *deployFiles) {
			delete(d.dockerfiles["auth-gateway"], "GATEWAY_ADMIN_ADDR")
		}},
		{"compose kills the worker before its shutdown budget", workerGraceCoversShutdown, func(d *deployFiles) {
			d.compose.Services["mail-worker"].StopGracePeriod = ""
		}},
		{"Kubernetes kills the worker before its shutdown budget", workerGraceCoversShutdown, func(d *deployFiles) {
			thirty := int64(30)
			d.kubeObject("Deployment", "mail-worker").workload.Template.Spec.TerminationGracePeriodSeconds = &thirty
		}},
		{"compose sets a variable the configuration tables do not document", composeEnvIsDocumented, func(d *deployFiles) {
			d.compose.Services["auth-gateway"].Environment["GATEWAY_LISTEN"] = "0.0.0.0:8080"
		}},
		{"compose sets a variable documented only for the other service", composeEnvIsDocumented, func(d *deployFiles) {
			d.compose.Services["auth-gateway"].Environment["SMTP_HOST"] = "mailpit"
		}},
		{"compose leaves the gateway on loopback inside its container", composeEnvIsDocumented, func(d *deployFiles) {
			d.compose.Services["auth-gateway"].Environment["GATEWAY_ADDR"] = "127.0.0.1:8080"
		}},
		{"the image default leaves the worker on loopback", composeEnvIsDocumented, func(d *deployFiles) {
			delete(d.compose.Services["mail-worker"].Environment, "WORKER_ADMIN_ADDR")
			d.dockerfiles["mail-worker"]["WORKER_ADMIN_ADDR"] = "127.0.0.1:9102"
		}},
		{"compose publishes a port on every interface", composePortsOnLoopback, func(d *deployFiles) {
			d.compose.Services["mailpit"].Ports[0].HostIP = ""
		}},
		{"compose publishes a port the gateway does not listen on", composePortsOnLoopback, func(d *deployFiles) {
			d.compose.Services["auth-gateway"].Environment["GATEWAY_ADMIN_ADDR"] = "0.0.0.0:9111"
		}},
		{"compose mounts a file that is not in the repository", composeMountsExist, func(d *deployFiles) {
			d.compose.Services["dex"].Volumes[0].Source = "./deploy/dex/config.yml"
		}},
		{"compose mounts an undeclared named volume", composeMountsExist, func(d *deployFiles) {
			d.compose.Services["nats"].Volumes[0].Source = "nats-state"
		}},
		{"a service depends on a service that does not exist", composeReferencesResolve, func(d *deployFiles) {
			d.compose.Services["mail-worker"].DependsOn = append(d.compose.Services["mail-worker"].DependsOn, "smtp")
		}},
		{"the worker's NATS_URL names a wrong port", composeReferencesResolve, func(d *deployFiles) {
			d.compose.Services["mail-worker"].Environment["NATS_URL"] = "nats://nats:4223"
		}},
		{"the worker's SMTP_HOST is not a compose service", composeReferencesResolve, func(d *deployFiles) {
			d.compose.Services["mail-worker"].Environment["SMTP_HOST"] = "mailhog"
		}},
		{"Prometheus scrapes a host that is not a compose service", prometheusScrapesAdminPorts, func(d *deployFiles) {
			d.prometheus.ScrapeConfigs[0].StaticConfigs[0].Targets[0] = "gateway:9101"
		}},
		{"Prometheus scrapes the gateway's public port instead of its admin port", prometheusScrapesAdminPorts, func(d *deployFiles) {
			d.prometheus.ScrapeConfigs[0].StaticConfigs[0].Targets[0] = "auth-gateway:8080"
		}},
		{"Prometheus rules are not mounted where rule_files looks", composeConfigsAreMounted, func(d *deployFiles) {
			d.prometheus.RuleFiles = []string{"alerts/*.yml"}
		}},
		{"Grafana's dashboard provider reads a folder nothing is mounted at", composeConfigsAreMounted, func(d *deployFiles) {
			d.grafana.Providers[0].Options.Path = "/etc/dashboards"
		}},
		{"Grafana's data source names no compose service", composeConfigsAreMounted, func(d *deployFiles) {
			d.grafana.Datasources[0].URL = "http://localhost:9090"
		}},
		{"the Dex client's secret differs from the gateway's", dexAcceptsGateway, func(d *deployFiles) {
			d.dex.StaticClients[0].Secret = "rotated"
		}},
		{"the gateway's callback is not registered at Dex", dexAcceptsGateway, func(d *deployFiles) {
			d.compose.Services["auth-gateway"].Environment["GATEWAY_PUBLIC_URL"] = "http://127.0.0.1:8080"
		}},
		{"the Dex issuer differs from the gateway's OIDC_ISSUER", dexAcceptsGateway, func(d *deployFiles) {
			d.dex.Issuer = "http://localhost:5556/dex"
		}},
		{"a ConfigMap sets a variable the configuration tables do not document", kubeEnvIsDocumented, func(d *deployFiles) {
			d.kubeObject("ConfigMap", "mail-worker").Data["SMTP_STARTTLS"] = "true"
		}},
		{"a ConfigMap leaves the gateway on loopback", kubeEnvIsDocumented, func(d *deployFiles) {
			d.kubeObject("ConfigMap", "auth-gateway").Data["GATEWAY_ADDR"] = "127.0.0.1:8080"
		}},
		{"a ConfigMap moves the gateway to a port its container does not declare", kubeEnvIsDocumented, func(d *deployFiles) {
			d.kubeObject("ConfigMap", "auth-gateway").Data["GATEWAY_ADDR"] = "0.0.0.0:8081"
		}},
		{"a Deployment reads a ConfigMap that does not exist", kubeEnvIsDocumented, func(d *deployFiles) {
			d.kubeContainer("mail-worker").EnvFrom[0].ConfigMapRef.Name = "worker-config"
		}},
		{"the liveness probe asks /readyz", kubeProbesUseAdminPort, func(d *deployFiles) {
			d.kubeContainer("auth-gateway").LivenessProbe.HTTPGet.Path = "/readyz"
		}},
		{"the readiness probe goes to the public port", kubeProbesUseAdminPort, func(d *deployFiles) {
			d.kubeContainer("auth-gateway").ReadinessProbe.HTTPGet.Port = "http"
		}},
		{"a Deployment has no readiness probe", kubeProbesUseAdminPort, func(d *deployFiles) {
			d.kubeContainer("mail-worker").ReadinessProbe = nil
		}},
		{"the Prometheus annotation names the wrong port", kubeProbesUseAdminPort, func(d *deployFiles) {
			d.kubeObject("Deployment", "mail-worker").workload.Template.Metadata.Annotations["prometheus.io/port"] = "9101"
		}},
		{"a Deployment may run as root", kubeRunsLockedDown, func(d *deployFiles) {
			d.kubeObject("Deployment", "mail-worker").workload.Template.Spec.SecurityContext.RunAsNonRoot = nil
		}},
		{"a Deployment runs as uid 0", kubeRunsLockedDown, func(d *deployFiles) {
			zero := int64(0)
			d.kubeContainer("auth-gateway").SecurityContext.RunAsUser = &zero
		}},
		{"a Deployment keeps its capabilities", kubeRunsLockedDown, func(d *deployFiles) {
			d.kubeContainer("auth-gateway").SecurityContext.Capabilities.Drop = nil
		}},
		{"a ConfigMap value is an unquoted number", kubeDataIsStrings, func(d *deployFiles) {
			cm := d.kubeObject("ConfigMap", "auth-gateway")
			cm.nonStrings = append(cm.nonStrings, "NATS_STREAM_REPLICAS")
		}},
		{"a Service targets a port no container declares", kubeServicesTargetContainerPorts, func(d *deployFiles) {
			d.kubeObject("Service", "auth-gateway").service.Ports[0].TargetPort = "8081"
		}},
		{"a Service selects no pods", kubeServicesTargetContainerPorts, func(d *deployFiles) {
			d.kubeObject("Service", "mail-worker").service.Selector["app.kubernetes.io/name"] = "worker"
		}},
		{"a *_FILE variable names a key the Secret does not have", kubeSecretFilesAreMounted, func(d *deployFiles) {
			d.kubeContainer("auth-gateway").Env[0].Value = "/run/secrets/cookie_key"
		}},
		{"a *_FILE variable points outside every mount", kubeSecretFilesAreMounted, func(d *deployFiles) {
			d.kubeContainer("mail-worker").Env[0].Value = "/var/run/secrets/smtp-password"
		}},
		{"a PodDisruptionBudget blocks every drain", kubeDisruptionBudgetsAllowDrain, func(d *deployFiles) {
			one := 1
			d.kubeObject("Deployment", "mail-worker").workload.Replicas = &one
		}},
		{"a kustomization lists a file that is not there", kustomizationsListTheirFiles, func(d *deployFiles) {
			k := d.kustomizations["deploy/kubernetes"]
			k.Resources = append(k.Resources, "ingress.yaml")
		}},
		{"a kustomization applies the example secret", kustomizationsListTheirFiles, func(d *deployFiles) {
			k := d.kustomizations["deploy/kubernetes"]
			k.Resources = append(k.Resources, "secret.example.yaml")
		}},
		{"a kustomization forgets a manifest beside it", kustomizationsListTheirFiles, func(d *deployFiles) {
			k := d.kustomizations["deploy/kubernetes"]
			k.Resources = slices.DeleteFunc(k.Resources, func(r string) bool { return r == "mail-worker.yaml" })
		}},
		{"the NATS routes miss a member after scaling", natsClusterIsConsistent, func(d *deployFiles) {
			five := 5
			d.kubeObject("StatefulSet", "nats").workload.Replicas = &five
		}},
		{"the gateway wants more stream replicas than NATS servers", natsClusterIsConsistent, func(d *deployFiles) {
			d.kubeObject("ConfigMap", "auth-gateway").Data["NATS_STREAM_REPLICAS"] = "5"
		}},
		{"the gateway trusts no proxy, so everyone behind the ingress is one client", kubeGatewayTrustsItsProxies, func(d *deployFiles) {
			delete(d.kubeObject("ConfigMap", "auth-gateway").Data, "GATEWAY_TRUSTED_PROXIES")
		}},
		{"the gateway's trusted proxies do not parse", kubeGatewayTrustsItsProxies, func(d *deployFiles) {
			d.kubeObject("ConfigMap", "auth-gateway").Data["GATEWAY_TRUSTED_PROXIES"] = "10.0.0.0/8,ingress-nginx"
		}},
		{"the services' NATS_URL names no Service", natsClusterIsConsistent, func(d *deployFiles) {
			d.kubeObject("ConfigMap", "mail-worker").Data["NATS_URL"] = "nats://nats-client:4222"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := loadDeployFiles(t, "..")
			if problems := tt.check(d); len(problems) > 0 {
				t.Fatalf("the check already fails on the real files, so this case proves nothing: %v", problems)
			}
			tt.mistake(d)
			problems := tt.check(d)
			if len(problems) == 0 {
				t.Fatal("the check did not notice the mistake")
			}
			t.Logf("noticed: %s", strings.Join(problems, "; "))
		})
	}
}

// ---- the files, as the checks see them ----

// deployFiles holds every deployment file of the repository, parsed. Paths in
// it are relative to root, with forward slashes, as in the files themselves.
type deployFiles struct {
	root           string
	documented     map[string]map[string]bool // docs/configuration.md section ("auth-gateway") → documented variables
	compose        composeFile
	dockerfiles    map[string]map[string]string // compose service → ENV of its Dockerfile's final stage
	prometheus     prometheusConfig
	grafana        grafanaProvisioning // every file under deploy/grafana/provisioning, merged
	dex            dexConfig           // the file compose mounts into the dex service
	kube           []*kubeObject       // deploy/kubernetes and deploy/nats
	kustomizations map[string]*kustomization
}

type composeFile struct {
	Services map[string]*composeService `yaml:"services"`
	Volumes  map[string]any             `yaml:"volumes"`
	Secrets  map[string]composeFileRef  `yaml:"secrets"`
	Configs  map[string]composeFileRef  `yaml:"configs"`
}

type composeService struct {
	Image       string         `yaml:"image"`
	Build       *composeBuild  `yaml:"build"`
	Command     composeCommand `yaml:"command"`
	Environment composeEnv     `yaml:"environment"`
	Ports       []composePort  `yaml:"ports"`
	Expose      []portRef      `yaml:"expose"`
	Volumes     []composeMount `yaml:"volumes"`
	DependsOn   composeNames   `yaml:"depends_on"`
	// StopGracePeriod is how long compose waits after SIGTERM (10s when empty).
	StopGracePeriod string `yaml:"stop_grace_period"`
}

type composeFileRef struct {
	File string `yaml:"file"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

// UnmarshalYAML accepts "build: ./dir" and "build: {context, dockerfile}".
func (b *composeBuild) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		b.Context = n.Value
		return nil
	}
	type plain composeBuild
	return n.Decode((*plain)(b))
}

// composeCommand accepts a string (split on spaces, as compose does for a
// plain command) or a list.
type composeCommand []string

func (c *composeCommand) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*c = strings.Fields(n.Value)
		return nil
	}
	return n.Decode((*[]string)(c))
}

// composeEnv accepts both the mapping and the "NAME=value" list form.
type composeEnv map[string]string

func (e *composeEnv) UnmarshalYAML(n *yaml.Node) error {
	*e = composeEnv{}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			v := n.Content[i+1]
			if v.Tag == "!!null" {
				(*e)[n.Content[i].Value] = ""
			} else {
				(*e)[n.Content[i].Value] = v.Value
			}
		}
	case yaml.SequenceNode:
		for _, item := range n.Content {
			name, value, _ := strings.Cut(item.Value, "=")
			(*e)[name] = value
		}
	default:
		return fmt.Errorf("line %d: environment is neither a mapping nor a list", n.Line)
	}
	return nil
}

// composeNames accepts depends_on as a list of names or a mapping by name.
type composeNames []string

func (c *composeNames) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		for i := 0; i < len(n.Content); i += 2 {
			*c = append(*c, n.Content[i].Value)
		}
		return nil
	}
	return n.Decode((*[]string)(c))
}

// composePort is one published port, from "[ip:][host:]container[/proto]" or
// the long {host_ip, published, target} form.
type composePort struct {
	HostIP    string  `yaml:"host_ip"`
	Published portRef `yaml:"published"`
	Target    portRef `yaml:"target"`
}

func (p *composePort) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		type plain composePort
		return n.Decode((*plain)(p))
	}
	s, _, _ := strings.Cut(n.Value, "/")
	if strings.HasPrefix(s, "[") { // [::1]:8080:8080
		end := strings.Index(s, "]")
		if end < 0 {
			return fmt.Errorf("line %d: bad port %q", n.Line, n.Value)
		}
		p.HostIP, s = s[1:end], strings.TrimPrefix(s[end+1:], ":")
	}
	parts := strings.Split(s, ":")
	switch len(parts) {
	case 1:
		p.Target = portRef(parts[0])
	case 2:
		p.Published, p.Target = portRef(parts[0]), portRef(parts[1])
	case 3:
		p.HostIP, p.Published, p.Target = parts[0], portRef(parts[1]), portRef(parts[2])
	default:
		return fmt.Errorf("line %d: bad port %q", n.Line, n.Value)
	}
	return nil
}

// composeMount is one entry of a service's volumes, short or long form.
type composeMount struct {
	Type   string `yaml:"type"` // "bind" or "volume"
	Source string `yaml:"source"`
	Target string `yaml:"target"`
}

func (m *composeMount) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		type plain composeMount
		return n.Decode((*plain)(m))
	}
	parts := strings.Split(n.Value, ":")
	if len(parts) == 1 {
		m.Type, m.Target = "volume", parts[0]
		return nil
	}
	m.Source, m.Target = parts[0], parts[1]
	m.Type = "volume"
	if strings.HasPrefix(m.Source, ".") || strings.HasPrefix(m.Source, "/") || strings.HasPrefix(m.Source, "~") {
		m.Type = "bind"
	}
	return nil
}

// portRef is a port as written: a number, or in Kubernetes a port name.
type portRef string

func (p *portRef) UnmarshalYAML(n *yaml.Node) error {
	*p = portRef(n.Value)
	return nil
}

type prometheusConfig struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

type grafanaProvisioning struct {
	Datasources []struct {
		Name string `yaml:"name"`
		URL  string `yaml:"url"`
	} `yaml:"datasources"`
	Providers []struct {
		Name    string `yaml:"name"`
		Options struct {
			Path string `yaml:"path"`
		} `yaml:"options"`
	} `yaml:"providers"`
}

type dexConfig struct {
	Issuer string `yaml:"issuer"`
	Web    struct {
		HTTP string `yaml:"http"`
	} `yaml:"web"`
	StaticClients []struct {
		ID           string   `yaml:"id"`
		Secret       string   `yaml:"secret"`
		RedirectURIs []string `yaml:"redirectURIs"`
	} `yaml:"staticClients"`
	EnablePasswordDB bool `yaml:"enablePasswordDB"`
	StaticPasswords  []struct {
		Email string `yaml:"email"`
		Hash  string `yaml:"hash"`
	} `yaml:"staticPasswords"`
}

// kubeObject is the part of a Kubernetes object the checks read. Exactly one
// of workload and service is set for Deployments/StatefulSets and Services.
type kubeObject struct {
	file     string
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       yaml.Node         `yaml:"spec"`

	workload *kubeWorkload
	service  *kubeService
	budget   *kubeBudget
	// nonStrings are data keys whose YAML value is not a string (an unquoted
	// 3 or true), which the API server rejects for ConfigMaps and Secrets.
	nonStrings []string
}

type kubeWorkload struct {
	Replicas    *int   `yaml:"replicas"`
	ServiceName string `yaml:"serviceName"` // StatefulSet
	Selector    struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	Template struct {
		Metadata struct {
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"metadata"`
		Spec struct {
			TerminationGracePeriodSeconds *int64              `yaml:"terminationGracePeriodSeconds"`
			SecurityContext               kubeSecurityContext `yaml:"securityContext"`
			Containers                    []*kubeContainer    `yaml:"containers"`
			Volumes                       []struct {
				Name   string `yaml:"name"`
				Secret *struct {
					SecretName string `yaml:"secretName"`
				} `yaml:"secret"`
				ConfigMap *struct {
					Name string `yaml:"name"`
				} `yaml:"configMap"`
			} `yaml:"volumes"`
		} `yaml:"spec"`
	} `yaml:"template"`
}

type kubeSecurityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
}

type kubeContainer struct {
	Name string `yaml:"name"`
	Env  []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
	} `yaml:"envFrom"`
	Ports []struct {
		Name          string  `yaml:"name"`
		ContainerPort portRef `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe   *kubeProbe          `yaml:"livenessProbe"`
	ReadinessProbe  *kubeProbe          `yaml:"readinessProbe"`
	SecurityContext kubeSecurityContext `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

type kubeProbe struct {
	HTTPGet *struct {
		Path string  `yaml:"path"`
		Port portRef `yaml:"port"`
	} `yaml:"httpGet"`
}

type kubeService struct {
	ClusterIP string            `yaml:"clusterIP"`
	Selector  map[string]string `yaml:"selector"`
	Ports     []kubeServicePort `yaml:"ports"`
}

type kubeServicePort struct {
	Name       string  `yaml:"name"`
	Port       portRef `yaml:"port"`
	TargetPort portRef `yaml:"targetPort"`
}

type kubeBudget struct {
	MinAvailable   *int `yaml:"minAvailable"`
	MaxUnavailable *int `yaml:"maxUnavailable"`
	Selector       struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
}

type kustomization struct {
	dir                string
	Resources          []string `yaml:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `yaml:"name"`
		Files []string `yaml:"files"`
	} `yaml:"configMapGenerator"`
	SecretGenerator []struct {
		Name  string   `yaml:"name"`
		Files []string `yaml:"files"`
	} `yaml:"secretGenerator"`
}

func loadDeployFiles(t *testing.T, root string) *deployFiles {
	t.Helper()
	d := &deployFiles{
		root:           root,
		dockerfiles:    map[string]map[string]string{},
		kustomizations: map[string]*kustomization{},
	}
	var err error
	if d.documented, err = documentedVariables(filepath.Join(root, "docs", "configuration.md")); err != nil {
		t.Fatal(err)
	}
	for _, name := range deployServices() {
		if len(d.documented[name]) == 0 {
			t.Fatalf("docs/configuration.md: no \"## %s\" table of variables", name)
		}
	}
	decodeYAMLFile(t, d.path("docker-compose.yml"), &d.compose)
	for name, svc := range d.compose.Services {
		if svc.Build == nil {
			continue
		}
		if env, err := dockerfileEnv(d.path(d.dockerfileOf(svc))); err == nil {
			d.dockerfiles[name] = env
		} else if !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
	decodeYAMLFile(t, d.path("deploy/prometheus/prometheus.yml"), &d.prometheus)
	for _, f := range yamlFilesUnder(t, d.path("deploy/grafana/provisioning")) {
		var g grafanaProvisioning
		decodeYAMLFile(t, f, &g)
		d.grafana.Datasources = append(d.grafana.Datasources, g.Datasources...)
		d.grafana.Providers = append(d.grafana.Providers, g.Providers...)
	}
	for _, f := range yamlFilesUnder(t, d.path("deploy/dex")) {
		var doc map[string]any
		decodeYAMLFile(t, f, &doc) // every file must at least be YAML
	}
	if dex := d.composeServiceByImage("ghcr.io/dexidp/dex"); dex != "" {
		if cmd := d.compose.Services[dex].Command; len(cmd) > 0 {
			if host := d.hostPathOf(dex, cmd[len(cmd)-1]); host != "" {
				if _, err := os.Stat(d.path(host)); err == nil {
					decodeYAMLFile(t, d.path(host), &d.dex)
				}
			}
		}
	}
	for _, dir := range []string{"deploy/kubernetes", "deploy/nats"} {
		for _, f := range yamlFilesUnder(t, d.path(dir)) {
			rel := d.rel(f)
			if path.Base(rel) == "kustomization.yaml" {
				k := &kustomization{dir: path.Dir(rel)}
				decodeYAMLFile(t, f, k)
				d.kustomizations[k.dir] = k
				continue
			}
			d.kube = append(d.kube, decodeKubeObjects(t, f, rel)...)
		}
	}
	return d
}

func (d *deployFiles) path(rel string) string { return filepath.Join(d.root, filepath.FromSlash(rel)) }

func (d *deployFiles) rel(p string) string {
	r, err := filepath.Rel(d.root, p)
	if err != nil {
		return p
	}
	return filepath.ToSlash(r)
}

func (d *deployFiles) exists(rel string) bool {
	_, err := os.Stat(d.path(rel))
	return err == nil
}

func decodeYAMLFile(t *testing.T, file string, out any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func yamlFilesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("%s: no YAML files", dir)
	}
	return files
}

func decodeKubeObjects(t *testing.T, file, rel string) []*kubeObject {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var objs []*kubeObject
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		o := &kubeObject{file: rel}
		if err := doc.Decode(o); err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		if o.Kind == "" {
			continue // an empty document
		}
		var data struct {
			Data       map[string]yaml.Node `yaml:"data"`
			StringData map[string]yaml.Node `yaml:"stringData"`
		}
		if err := doc.Decode(&data); err != nil {
			t.Fatalf("%s: %s %s: %v", rel, o.Kind, o.Metadata.Name, err)
		}
		for _, m := range []map[string]yaml.Node{data.Data, data.StringData} {
			for k, v := range m {
				if v.Tag != "!!str" {
					o.nonStrings = append(o.nonStrings, k)
				}
			}
		}
		var target any
		switch o.Kind {
		case "Deployment", "StatefulSet":
			o.workload = &kubeWorkload{}
			target = o.workload
		case "Service":
			o.service = &kubeService{}
			target = o.service
		case "PodDisruptionBudget":
			o.budget = &kubeBudget{}
			target = o.budget
		}
		if target != nil {
			if err := o.Spec.Decode(target); err != nil {
				t.Fatalf("%s: %s %s: %v", rel, o.Kind, o.Metadata.Name, err)
			}
		}
		objs = append(objs, o)
	}
}

// documentedVariables reads the tables of docs/configuration.md: under each
// "## <service>" heading, rows start with "| `NAME`" or "| `A`, `B`".
func documentedVariables(file string) (map[string]map[string]bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names := regexp.MustCompile("`([A-Z][A-Z0-9_]*)`")
	vars := map[string]map[string]bool{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
			section = ""
			if name, ok := strings.CutPrefix(line, "## "); ok {
				section = strings.TrimSpace(name)
			}
		case section != "" && strings.HasPrefix(line, "| `"):
			firstCell := strings.SplitN(line, "|", 3)[1]
			for _, m := range names.FindAllStringSubmatch(firstCell, -1) {
				if vars[section] == nil {
					vars[section] = map[string]bool{}
				}
				vars[section][m[1]] = true
			}
		}
	}
	return vars, sc.Err()
}

// dockerfileEnv returns the ENV of a Dockerfile's final stage: what a
// container of the image starts with.
func dockerfileEnv(file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var env map[string]string
	var inst strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(trimmed, `\`); ok {
			inst.WriteString(cont + " ")
			continue
		}
		inst.WriteString(trimmed)
		fields := strings.Fields(inst.String())
		inst.Reset()
		if len(fields) == 0 {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			env = map[string]string{}
		case "ENV":
			if len(fields) == 3 && !strings.Contains(fields[1], "=") { // ENV NAME value
				env[fields[1]] = fields[2]
				continue
			}
			for _, kv := range fields[1:] {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = strings.Trim(v, `"'`)
			}
		}
	}
	if env == nil {
		return nil, fmt.Errorf("%s: no FROM", file)
	}
	return env, nil
}

// ---- helpers shared by the checks ----

func (d *deployFiles) dockerfileOf(svc *composeService) string {
	dockerfile := svc.Build.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	context := svc.Build.Context
	if context == "" {
		context = "."
	}
	return path.Join(context, dockerfile)
}

// composeEnvOf is what a compose service's process sees: its image's ENV
// overridden by the compose environment.
func (d *deployFiles) composeEnvOf(name string) map[string]string {
	env := map[string]string{}
	maps.Copy(env, d.dockerfiles[name])
	maps.Copy(env, d.compose.Services[name].Environment)
	return env
}

// listenPorts are the container ports a compose service listens on: from
// its *_ADDR variables for Doorbell's services, else what it publishes or
// exposes.
func (d *deployFiles) listenPorts(name string) []string {
	svc, ok := d.compose.Services[name]
	if !ok {
		return nil
	}
	var ports []string
	for k, v := range d.composeEnvOf(name) {
		if strings.HasSuffix(k, "_ADDR") {
			if _, port, err := net.SplitHostPort(v); err == nil {
				ports = append(ports, port)
			}
		}
	}
	if len(ports) > 0 {
		return ports
	}
	for _, p := range svc.Ports {
		ports = append(ports, string(p.Target))
	}
	for _, p := range svc.Expose {
		ports = append(ports, string(p))
	}
	return ports
}

func (d *deployFiles) composeServiceByImage(prefix string) string {
	for name, svc := range d.compose.Services {
		if strings.HasPrefix(svc.Image, prefix) {
			return name
		}
	}
	return ""
}

// hostPathOf maps a path inside a compose service's container to the
// repository path bind-mounted there, or "" when no bind mount covers it.
func (d *deployFiles) hostPathOf(service, containerPath string) string {
	best, host := "", ""
	for _, m := range d.compose.Services[service].Volumes {
		target := path.Clean(m.Target)
		if containerPath != target && !strings.HasPrefix(containerPath, target+"/") {
			continue
		}
		if len(target) <= len(best) {
			continue
		}
		best, host = target, ""
		if m.Type == "bind" {
			host = path.Join(m.Source, strings.TrimPrefix(containerPath, target))
		}
	}
	return host
}

// endpoint splits a URL into host and port, with the scheme's default port.
func endpoint(rawURL string) (host, port string, err error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", "", err
	}
	port = u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443", "nats": "4222"}[u.Scheme]
	}
	return u.Hostname(), port, nil
}

// undocumented reports the variables of env that section of
// docs/configuration.md does not document; NAME_FILE counts as documented
// when NAME is.
func (d *deployFiles) undocumented(section string, env map[string]string) []string {
	documented := d.documented[section]
	var bad []string
	for name := range env {
		if !documented[name] && !documented[strings.TrimSuffix(name, "_FILE")] {
			bad = append(bad, name)
		}
	}
	slices.Sort(bad)
	return bad
}

// loopbackAddrs reports *_ADDR variables that do not bind 0.0.0.0, which in a
// container means nobody outside the container can connect.
func loopbackAddrs(env map[string]string) []string {
	var bad []string
	for name, v := range env {
		if !strings.HasSuffix(name, "_ADDR") {
			continue
		}
		if host, _, err := net.SplitHostPort(v); err != nil || host != "0.0.0.0" {
			bad = append(bad, fmt.Sprintf("%s=%q", name, v))
		}
	}
	slices.Sort(bad)
	return bad
}

func (d *deployFiles) kubeObject(kind, name string) *kubeObject {
	for _, o := range d.kube {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	return nil
}

func (d *deployFiles) kubeObjects(kind string) []*kubeObject {
	var objs []*kubeObject
	for _, o := range d.kube {
		if o.Kind == kind {
			objs = append(objs, o)
		}
	}
	return objs
}

// kubeContainer is the first container of the Deployment name.
func (d *deployFiles) kubeContainer(name string) *kubeContainer {
	return d.kubeObject("Deployment", name).workload.Template.Spec.Containers[0]
}

// kubeEnv is what a container's process sees from the manifests: its
// ConfigMaps' keys and its env entries. Missing ConfigMaps are reported.
func (d *deployFiles) kubeEnv(w *kubeObject, c *kubeContainer) (env map[string]string, problems []string) {
	env = map[string]string{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			continue
		}
		cm := d.kubeObject("ConfigMap", from.ConfigMapRef.Name)
		if cm == nil {
			problems = append(problems, fmt.Sprintf("%s: %s %s reads ConfigMap %q, which no manifest defines", w.file, w.Kind, w.Metadata.Name, from.ConfigMapRef.Name))
			continue
		}
		maps.Copy(env, cm.Data)
	}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	return env, problems
}

// containerPort resolves a port name or number against a container's ports;
// "" when the container declares no such port.
func containerPort(c *kubeContainer, ref portRef) string {
	for _, p := range c.Ports {
		if string(ref) == p.Name || ref == p.ContainerPort {
			return string(p.ContainerPort)
		}
	}
	return ""
}

func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// ---- the checks: compose ----

func composeBuildsHaveDockerfiles(d *deployFiles) []string {
	var problems []string
	for name, svc := range d.compose.Services {
		if svc.Build == nil {
			continue
		}
		if f := d.dockerfileOf(svc); !d.exists(f) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s builds from %s, which does not exist", name, f))
		}
	}
	return problems
}

// imagesListenOnAllInterfaces: the binaries default to loopback, which inside
// a container nobody can reach, so each image sets every documented *_ADDR.
func imagesListenOnAllInterfaces(d *deployFiles) []string {
	var problems []string
	for _, name := range deployServices() {
		svc := d.compose.Services[name]
		if svc == nil || svc.Build == nil {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s is not built from a Dockerfile", name))
			continue
		}
		env, ok := d.dockerfiles[name]
		if !ok {
			continue // composeBuildsHaveDockerfiles reports it
		}
		for v := range d.documented[name] {
			if !strings.HasSuffix(v, "_ADDR") {
				continue
			}
			if _, set := env[v]; !set {
				problems = append(problems, fmt.Sprintf("%s: no ENV %s=0.0.0.0:<port>, so the image listens on loopback only", d.dockerfileOf(svc), v))
			}
		}
		for _, v := range loopbackAddrs(env) {
			problems = append(problems, fmt.Sprintf("%s: ENV %s; an image must listen on 0.0.0.0", d.dockerfileOf(svc), v))
		}
	}
	return problems
}

func composeEnvIsDocumented(d *deployFiles) []string {
	var problems []string
	for _, name := range deployServices() {
		if d.compose.Services[name] == nil {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: no service %s", name))
			continue
		}
		env := d.composeEnvOf(name)
		for _, v := range d.undocumented(name, env) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s sets %s, which docs/configuration.md does not document for %s", name, v, name))
		}
		for _, v := range loopbackAddrs(env) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s listens on %s; inside a container it must bind 0.0.0.0", name, v))
		}
	}
	return problems
}

func composePortsOnLoopback(d *deployFiles) []string {
	var problems []string
	for name, svc := range d.compose.Services {
		listening := d.listenPorts(name)
		for _, p := range svc.Ports {
			if p.HostIP != "127.0.0.1" {
				problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s publishes container port %s on %q; bind it to 127.0.0.1", name, p.Target, p.HostIP))
			}
			if !slices.Contains(listening, string(p.Target)) {
				problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s publishes container port %s, but listens on %v", name, p.Target, listening))
			}
		}
	}
	return problems
}

func composeMountsExist(d *deployFiles) []string {
	var problems []string
	for name, svc := range d.compose.Services {
		for _, m := range svc.Volumes {
			switch {
			case m.Type == "bind" && !d.exists(m.Source):
				problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s mounts %s, which does not exist", name, m.Source))
			case m.Type == "volume" && m.Source != "":
				if _, ok := d.compose.Volumes[m.Source]; !ok {
					problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s mounts volume %q, which the top-level volumes do not declare", name, m.Source))
				}
			}
		}
	}
	for kind, refs := range map[string]map[string]composeFileRef{"secret": d.compose.Secrets, "config": d.compose.Configs} {
		for name, ref := range refs {
			if ref.File != "" && !d.exists(ref.File) {
				problems = append(problems, fmt.Sprintf("docker-compose.yml: %s %s is read from %s, which does not exist", kind, name, ref.File))
			}
		}
	}
	return problems
}

func composeReferencesResolve(d *deployFiles) []string {
	var problems []string
	reaches := func(from, what, host, port string) {
		if d.compose.Services[host] == nil {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s's %s names host %q, which is not a compose service", from, what, host))
		} else if ports := d.listenPorts(host); !slices.Contains(ports, port) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s's %s uses port %s of %s, which listens on %v", from, what, port, host, ports))
		}
	}
	for name, svc := range d.compose.Services {
		for _, dep := range svc.DependsOn {
			if d.compose.Services[dep] == nil {
				problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s depends on %q, which is not a compose service", name, dep))
			}
		}
	}
	for _, name := range deployServices() {
		if d.compose.Services[name] == nil {
			continue
		}
		env := d.compose.Services[name].Environment
		for _, v := range []string{"NATS_URL", "OIDC_ISSUER"} {
			if env[v] == "" {
				continue
			}
			for _, one := range strings.Split(env[v], ",") {
				host, port, err := endpoint(strings.TrimSpace(one))
				if err != nil {
					problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s: %s: %v", name, v, err))
					continue
				}
				reaches(name, v, host, port)
			}
		}
		if host := env["SMTP_HOST"]; host != "" {
			port := cmp.Or(env["SMTP_PORT"], "587")
			reaches(name, "SMTP_HOST", host, port)
		}
	}
	return problems
}

func prometheusScrapesAdminPorts(d *deployFiles) []string {
	var problems []string
	scraped := map[string]bool{}
	for _, job := range d.prometheus.ScrapeConfigs {
		for _, sc := range job.StaticConfigs {
			for _, target := range sc.Targets {
				scraped[target] = true
				host, port, err := net.SplitHostPort(target)
				if err != nil {
					problems = append(problems, fmt.Sprintf("deploy/prometheus/prometheus.yml: job %s: target %q is not host:port", job.JobName, target))
					continue
				}
				if d.compose.Services[host] == nil {
					problems = append(problems, fmt.Sprintf("deploy/prometheus/prometheus.yml: job %s scrapes %q, which is not a compose service", job.JobName, host))
				} else if ports := d.listenPorts(host); !slices.Contains(ports, port) {
					problems = append(problems, fmt.Sprintf("deploy/prometheus/prometheus.yml: job %s scrapes port %s of %s, which listens on %v", job.JobName, port, host, ports))
				}
			}
		}
	}
	for _, name := range deployServices() {
		for k, v := range d.composeEnvOf(name) {
			if !strings.HasSuffix(k, "_ADMIN_ADDR") {
				continue
			}
			if _, port, err := net.SplitHostPort(v); err == nil && !scraped[net.JoinHostPort(name, port)] {
				problems = append(problems, fmt.Sprintf("deploy/prometheus/prometheus.yml: no job scrapes %s:%s (%s of %s)", name, port, k, name))
			}
		}
	}
	return problems
}

func composeConfigsAreMounted(d *deployFiles) []string {
	var problems []string
	// mounted reports unless a repository path (want, when given) that
	// exists is bind-mounted at containerPath.
	mounted := func(service, containerPath, want string) {
		host := d.hostPathOf(service, containerPath)
		switch {
		case host == "":
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s has nothing from the repository mounted at %s", service, containerPath))
		case want != "" && path.Clean(host) != want:
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s has %s at %s, want %s", service, host, containerPath, want))
		case !d.exists(host):
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s: %s (mounted at %s) does not exist", service, host, containerPath))
		}
	}

	if prom := d.composeServiceByImage("prom/prometheus"); prom == "" {
		problems = append(problems, "docker-compose.yml: no prom/prometheus service")
	} else {
		const config = "/etc/prometheus/prometheus.yml"
		mounted(prom, config, "deploy/prometheus/prometheus.yml")
		for _, pattern := range d.prometheus.RuleFiles {
			mounted(prom, path.Dir(path.Join(path.Dir(config), pattern)), "")
		}
	}

	if graf := d.composeServiceByImage("grafana/grafana"); graf == "" {
		problems = append(problems, "docker-compose.yml: no grafana/grafana service")
	} else {
		mounted(graf, "/etc/grafana/provisioning", "deploy/grafana/provisioning")
		for _, p := range d.grafana.Providers {
			mounted(graf, p.Options.Path, "")
		}
		for _, ds := range d.grafana.Datasources {
			host, port, err := endpoint(ds.URL)
			if err != nil || d.compose.Services[host] == nil || !slices.Contains(d.listenPorts(host), port) {
				problems = append(problems, fmt.Sprintf("deploy/grafana/provisioning: data source %s at %q is not a compose service's port", ds.Name, ds.URL))
			}
		}
	}

	if dex := d.composeServiceByImage("ghcr.io/dexidp/dex"); dex == "" {
		problems = append(problems, "docker-compose.yml: no ghcr.io/dexidp/dex service")
	} else if cmd := d.compose.Services[dex].Command; len(cmd) == 0 {
		problems = append(problems, "docker-compose.yml: service dex has no command naming its config file")
	} else {
		mounted(dex, cmd[len(cmd)-1], "deploy/dex/config.yaml")
	}
	return problems
}

func dexAcceptsGateway(d *deployFiles) []string {
	gw := d.compose.Services["auth-gateway"]
	if gw == nil {
		return []string{"docker-compose.yml: no service auth-gateway"}
	}
	env := gw.Environment
	var problems []string
	if d.dex.Issuer == "" {
		return []string{"docker-compose.yml: the dex service's config file was not found or has no issuer"}
	}
	if env["OIDC_ISSUER"] != d.dex.Issuer {
		problems = append(problems, fmt.Sprintf("auth-gateway's OIDC_ISSUER %q differs from Dex's issuer %q: discovery and ID tokens would be refused", env["OIDC_ISSUER"], d.dex.Issuer))
	}
	if host, port, err := endpoint(d.dex.Issuer); err != nil {
		problems = append(problems, fmt.Sprintf("deploy/dex/config.yaml: issuer: %v", err))
	} else if _, webPort, _ := net.SplitHostPort(d.dex.Web.HTTP); port != webPort || d.composeServiceByImage("ghcr.io/dexidp/dex") != host {
		problems = append(problems, fmt.Sprintf("deploy/dex/config.yaml: issuer %q is not the dex service (%s) on its web port %s", d.dex.Issuer, d.composeServiceByImage("ghcr.io/dexidp/dex"), webPort))
	}
	callback := strings.TrimSuffix(cmp.Or(env["GATEWAY_PUBLIC_URL"], "http://127.0.0.1:8080"), "/") + "/auth/callback"
	found := false
	for _, c := range d.dex.StaticClients {
		if c.ID != env["OIDC_CLIENT_ID"] {
			continue
		}
		found = true
		if c.Secret != env["OIDC_CLIENT_SECRET"] {
			problems = append(problems, fmt.Sprintf("deploy/dex/config.yaml: client %s's secret differs from auth-gateway's OIDC_CLIENT_SECRET", c.ID))
		}
		if !slices.Contains(c.RedirectURIs, callback) {
			problems = append(problems, fmt.Sprintf("deploy/dex/config.yaml: client %s does not allow the gateway's callback %s (redirectURIs %v)", c.ID, callback, c.RedirectURIs))
		}
	}
	if !found {
		problems = append(problems, fmt.Sprintf("deploy/dex/config.yaml: no static client %q (auth-gateway's OIDC_CLIENT_ID)", env["OIDC_CLIENT_ID"]))
	}
	if !d.dex.EnablePasswordDB || len(d.dex.StaticPasswords) == 0 {
		problems = append(problems, "deploy/dex/config.yaml: no password user to sign in with")
	}
	return problems
}

// ---- the checks: Kubernetes ----

func kubeEnvIsDocumented(d *deployFiles) []string {
	var problems []string
	for _, dep := range d.kubeObjects("Deployment") {
		if !slices.Contains(deployServices(), dep.Metadata.Name) {
			problems = append(problems, fmt.Sprintf("%s: Deployment %s is not one of %v", dep.file, dep.Metadata.Name, deployServices()))
			continue
		}
		for _, c := range dep.workload.Template.Spec.Containers {
			env, missing := d.kubeEnv(dep, c)
			problems = append(problems, missing...)
			for _, v := range d.undocumented(dep.Metadata.Name, env) {
				problems = append(problems, fmt.Sprintf("%s: Deployment %s sets %s, which docs/configuration.md does not document for %s", dep.file, dep.Metadata.Name, v, dep.Metadata.Name))
			}
			for _, v := range loopbackAddrs(env) {
				problems = append(problems, fmt.Sprintf("%s: Deployment %s listens on %s; in a pod it must bind 0.0.0.0", dep.file, dep.Metadata.Name, v))
			}
			for k, v := range env {
				if _, port, err := net.SplitHostPort(v); err == nil && strings.HasSuffix(k, "_ADDR") && containerPort(c, portRef(port)) == "" {
					problems = append(problems, fmt.Sprintf("%s: Deployment %s listens on port %s (%s) but its container declares no such port", dep.file, dep.Metadata.Name, port, k))
				}
			}
		}
	}
	if len(d.kubeObjects("Deployment")) == 0 {
		problems = append(problems, "deploy/kubernetes: no Deployments")
	}
	return problems
}

func kubeProbesUseAdminPort(d *deployFiles) []string {
	var problems []string
	for _, dep := range d.kubeObjects("Deployment") {
		for _, c := range dep.workload.Template.Spec.Containers {
			where := fmt.Sprintf("%s: Deployment %s, container %s", dep.file, dep.Metadata.Name, c.Name)
			env, _ := d.kubeEnv(dep, c)
			adminPort := ""
			for k, v := range env {
				if strings.HasSuffix(k, "_ADMIN_ADDR") {
					_, adminPort, _ = net.SplitHostPort(v)
				}
			}
			if adminPort == "" {
				problems = append(problems, where+": no *_ADMIN_ADDR, so the admin port is the binary's loopback default")
				continue
			}
			for _, probe := range []struct {
				kind, path string
				p          *kubeProbe
			}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
				switch {
				case probe.p == nil || probe.p.HTTPGet == nil:
					problems = append(problems, fmt.Sprintf("%s: no HTTP %s probe", where, probe.kind))
				case probe.p.HTTPGet.Path != probe.path:
					problems = append(problems, fmt.Sprintf("%s: %s probe asks %s, want %s", where, probe.kind, probe.p.HTTPGet.Path, probe.path))
				case containerPort(c, probe.p.HTTPGet.Port) != adminPort:
					problems = append(problems, fmt.Sprintf("%s: %s probe uses port %s, not the admin port %s", where, probe.kind, probe.p.HTTPGet.Port, adminPort))
				}
			}
			ann := dep.workload.Template.Metadata.Annotations
			if ann["prometheus.io/scrape"] != "true" {
				problems = append(problems, where+": pod template lacks prometheus.io/scrape: \"true\"")
			} else if ann["prometheus.io/port"] != adminPort {
				problems = append(problems, fmt.Sprintf("%s: prometheus.io/port is %q, not the admin port %s", where, ann["prometheus.io/port"], adminPort))
			}
		}
	}
	return problems
}

func kubeRunsLockedDown(d *deployFiles) []string {
	var problems []string
	for _, dep := range d.kubeObjects("Deployment") {
		pod := dep.workload.Template.Spec.SecurityContext
		for _, c := range dep.workload.Template.Spec.Containers {
			where := fmt.Sprintf("%s: Deployment %s, container %s", dep.file, dep.Metadata.Name, c.Name)
			sc := c.SecurityContext
			nonRoot := cmp.Or(sc.RunAsNonRoot, pod.RunAsNonRoot)
			user := cmp.Or(sc.RunAsUser, pod.RunAsUser)
			if nonRoot == nil || !*nonRoot {
				problems = append(problems, where+": runAsNonRoot is not true")
			}
			// The image names its user ("nonroot"), which the kubelet cannot
			// check against runAsNonRoot: the manifest must give the number.
			if user == nil || *user == 0 {
				problems = append(problems, where+": runAsUser must be a non-zero uid")
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				problems = append(problems, where+": readOnlyRootFilesystem is not true")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				problems = append(problems, where+": allowPrivilegeEscalation is not false")
			}
			if !slices.Contains(sc.Capabilities.Drop, "ALL") {
				problems = append(problems, where+": capabilities do not drop ALL")
			}
		}
	}
	return problems
}

func kubeDataIsStrings(d *deployFiles) []string {
	var problems []string
	for _, o := range d.kube {
		for _, k := range o.nonStrings {
			problems = append(problems, fmt.Sprintf("%s: %s %s: the value of %s is not a string; quote it or kubectl apply fails", o.file, o.Kind, o.Metadata.Name, k))
		}
	}
	return problems
}

func kubeServicesTargetContainerPorts(d *deployFiles) []string {
	var problems []string
	for _, svc := range d.kubeObjects("Service") {
		var selected []*kubeObject
		for _, o := range d.kube {
			if o.workload != nil && labelsMatch(svc.service.Selector, o.workload.Template.Metadata.Labels) {
				selected = append(selected, o)
			}
		}
		if len(selected) == 0 {
			problems = append(problems, fmt.Sprintf("%s: Service %s selects %v, which no Deployment or StatefulSet's pods carry", svc.file, svc.Metadata.Name, svc.service.Selector))
		}
		for _, w := range selected {
			for _, p := range svc.service.Ports {
				target := cmp.Or(p.TargetPort, p.Port)
				ok := slices.ContainsFunc(w.workload.Template.Spec.Containers, func(c *kubeContainer) bool { return containerPort(c, target) != "" })
				if !ok {
					problems = append(problems, fmt.Sprintf("%s: Service %s port %s targets %s, which no container of %s %s declares", svc.file, svc.Metadata.Name, cmp.Or(p.Name, string(p.Port)), target, w.Kind, w.Metadata.Name))
				}
			}
		}
	}
	return problems
}

func kubeSecretFilesAreMounted(d *deployFiles) []string {
	var problems []string
	for _, dep := range d.kubeObjects("Deployment") {
		spec := dep.workload.Template.Spec
		for _, c := range spec.Containers {
			env, _ := d.kubeEnv(dep, c)
			for name, file := range env {
				if !strings.HasSuffix(name, "_FILE") || file == "" {
					continue
				}
				where := fmt.Sprintf("%s: Deployment %s: %s=%s", dep.file, dep.Metadata.Name, name, file)
				mount, volume := "", ""
				for _, m := range c.VolumeMounts {
					if strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/") && len(m.MountPath) > len(mount) {
						mount, volume = m.MountPath, m.Name
					}
				}
				if mount == "" {
					problems = append(problems, where+": no volume is mounted there")
					continue
				}
				key := strings.TrimPrefix(strings.TrimPrefix(file, mount), "/")
				for _, v := range spec.Volumes {
					if v.Name != volume {
						continue
					}
					var keys map[string]string
					switch {
					case v.Secret != nil:
						s := d.kubeObject("Secret", v.Secret.SecretName)
						if s == nil {
							problems = append(problems, fmt.Sprintf("%s: Secret %s is not defined (not even in secret.example.yaml)", where, v.Secret.SecretName))
							continue
						}
						keys = s.StringData
						if keys == nil {
							keys = s.Data
						}
					case v.ConfigMap != nil:
						if cm := d.kubeObject("ConfigMap", v.ConfigMap.Name); cm != nil {
							keys = cm.Data
						}
					}
					if _, ok := keys[key]; !ok {
						problems = append(problems, fmt.Sprintf("%s: volume %s has no key %q (keys: %v)", where, volume, key, slices.Sorted(maps.Keys(keys))))
					}
				}
			}
		}
	}
	return problems
}

func kubeDisruptionBudgetsAllowDrain(d *deployFiles) []string {
	var problems []string
	for _, dep := range d.kubeObjects("Deployment") {
		replicas := 1
		if dep.workload.Replicas != nil {
			replicas = *dep.workload.Replicas
		}
		var budget *kubeObject
		for _, b := range d.kubeObjects("PodDisruptionBudget") {
			if labelsMatch(b.budget.Selector.MatchLabels, dep.workload.Template.Metadata.Labels) {
				budget = b
			}
		}
		switch {
		case budget == nil:
			problems = append(problems, fmt.Sprintf("%s: Deployment %s has no PodDisruptionBudget", dep.file, dep.Metadata.Name))
		case budget.budget.MinAvailable != nil && *budget.budget.MinAvailable >= replicas:
			problems = append(problems, fmt.Sprintf("%s: PodDisruptionBudget %s needs %d of %s's %d replicas: no node could ever be drained", budget.file, budget.Metadata.Name, *budget.budget.MinAvailable, dep.Metadata.Name, replicas))
		case budget.budget.MaxUnavailable != nil && *budget.budget.MaxUnavailable < 1:
			problems = append(problems, fmt.Sprintf("%s: PodDisruptionBudget %s allows no disruption", budget.file, budget.Metadata.Name))
		}
	}
	return problems
}

func kustomizationsListTheirFiles(d *deployFiles) []string {
	var problems []string
	for _, dir := range []string{"deploy/kubernetes", "deploy/nats"} {
		k := d.kustomizations[dir]
		if k == nil {
			problems = append(problems, dir+": no kustomization.yaml")
			continue
		}
		where := dir + "/kustomization.yaml"
		listed := map[string]bool{}
		for _, r := range k.Resources {
			listed[path.Clean(r)] = true
			switch {
			case strings.Contains(r, ".example."):
				problems = append(problems, fmt.Sprintf("%s: lists %s; examples must never be applied as they are", where, r))
			case !d.exists(path.Join(dir, r)):
				problems = append(problems, fmt.Sprintf("%s: lists %s, which does not exist", where, r))
			}
		}
		var generated []string
		for _, g := range k.ConfigMapGenerator {
			generated = append(generated, g.Files...)
		}
		for _, g := range k.SecretGenerator {
			generated = append(generated, g.Files...)
		}
		for _, f := range generated {
			if _, file, ok := strings.Cut(f, "="); ok {
				f = file
			}
			if !d.exists(path.Join(dir, f)) {
				problems = append(problems, fmt.Sprintf("%s: generates from %s, which does not exist", where, f))
			}
		}
		entries, err := os.ReadDir(d.path(dir))
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		for _, e := range entries {
			n := e.Name()
			if e.IsDir() || n == "kustomization.yaml" || strings.Contains(n, ".example.") || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
				continue
			}
			if !listed[n] {
				problems = append(problems, fmt.Sprintf("%s: does not list %s, so kubectl apply -k would skip it", where, n))
			}
		}
	}
	return problems
}

// kubeGatewayTrustsItsProxies: in Kubernetes every request reaches the
// gateway through an ingress controller, so without GATEWAY_TRUSTED_PROXIES
// everyone shares one rate-limit bucket and every event carries the
// ingress's address.
func kubeGatewayTrustsItsProxies(d *deployFiles) []string {
	dep := d.kubeObject("Deployment", "auth-gateway")
	if dep == nil {
		return []string{"deploy/kubernetes: no Deployment auth-gateway"}
	}
	env, problems := d.kubeEnv(dep, dep.workload.Template.Spec.Containers[0])
	v := env["GATEWAY_TRUSTED_PROXIES"]
	if strings.TrimSpace(v) == "" {
		return append(problems, fmt.Sprintf("%s: Deployment auth-gateway sets no GATEWAY_TRUSTED_PROXIES: behind the ingress every person would share one rate-limit bucket and one address", dep.file))
	}
	for _, p := range strings.Split(v, ",") {
		p = strings.TrimSpace(p)
		if _, err := netip.ParsePrefix(p); err != nil {
			if _, err := netip.ParseAddr(p); err != nil {
				problems = append(problems, fmt.Sprintf("%s: GATEWAY_TRUSTED_PROXIES entry %q is not an address or prefix", dep.file, p))
			}
		}
	}
	return problems
}

func natsClusterIsConsistent(d *deployFiles) []string {
	sts := d.kubeObject("StatefulSet", "nats")
	if sts == nil {
		return []string{"deploy/nats: no StatefulSet nats"}
	}
	var problems []string
	where := sts.file + ": StatefulSet nats"
	replicas := 1
	if sts.workload.Replicas != nil {
		replicas = *sts.workload.Replicas
	}
	if replicas < 3 {
		problems = append(problems, fmt.Sprintf("%s: %d replicas; a JetStream cluster that survives a lost server needs 3", where, replicas))
	}
	headless := d.kubeObject("Service", sts.workload.ServiceName)
	if headless == nil || headless.service.ClusterIP != "None" {
		problems = append(problems, fmt.Sprintf("%s: serviceName %q is not a headless Service", where, sts.workload.ServiceName))
	}

	// The routes in nats.conf, reached through the ConfigMap the pods mount.
	conf := ""
	for _, v := range sts.workload.Template.Spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		for _, k := range d.kustomizations {
			for _, g := range k.ConfigMapGenerator {
				if g.Name == v.ConfigMap.Name && len(g.Files) > 0 {
					conf = path.Join(k.dir, g.Files[0])
				}
			}
		}
	}
	b, err := os.ReadFile(d.path(conf))
	if conf == "" || err != nil {
		return append(problems, fmt.Sprintf("%s: its config volume comes from no configMapGenerator file that exists (%q)", where, conf))
	}
	clusterPort := ""
	for _, c := range sts.workload.Template.Spec.Containers {
		clusterPort = cmp.Or(containerPort(c, "cluster"), clusterPort)
	}
	var want, got []string
	for i := range replicas {
		want = append(want, fmt.Sprintf("nats-%d.%s:%s", i, sts.workload.ServiceName, clusterPort))
	}
	for _, m := range regexp.MustCompile(`nats://([^\s,\]]+)`).FindAllStringSubmatch(string(b), -1) {
		got = append(got, m[1])
	}
	if !slices.Equal(want, got) {
		problems = append(problems, fmt.Sprintf("%s: routes %v, want one per replica %v", conf, got, want))
	}

	// Both services reach NATS through a Service, and the stream fits.
	for _, name := range deployServices() {
		dep := d.kubeObject("Deployment", name)
		if dep == nil {
			continue
		}
		env, _ := d.kubeEnv(dep, dep.workload.Template.Spec.Containers[0])
		host, port, err := endpoint(cmp.Or(env["NATS_URL"], "nats://127.0.0.1:4222"))
		svc := d.kubeObject("Service", host)
		if err != nil || svc == nil || !slices.ContainsFunc(svc.service.Ports, func(p kubeServicePort) bool { return string(p.Port) == port }) {
			problems = append(problems, fmt.Sprintf("%s: Deployment %s: NATS_URL %q is not a Service port of the manifests", dep.file, name, env["NATS_URL"]))
		}
		if r := env["NATS_STREAM_REPLICAS"]; r != "" && r != "auto" {
			if n, err := strconv.Atoi(r); err != nil || n > replicas {
				problems = append(problems, fmt.Sprintf("%s: Deployment %s: NATS_STREAM_REPLICAS=%s, but NATS has %d servers", dep.file, name, r, replicas))
			}
		}
	}
	return problems
}

// workerGraceCoversShutdown holds compose's stop_grace_period and the
// Kubernetes terminationGracePeriodSeconds of the mail-worker to at least
// its WORKER_SHUTDOWN_TIMEOUT (by default SMTP_FINAL_TIMEOUT + 30s): a
// worker killed while it waits for the relay's reply to an email the relay
// already has sends that email twice.
func workerGraceCoversShutdown(d *deployFiles) []string {
	budget := func(env map[string]string) (time.Duration, error) {
		if v := env["WORKER_SHUTDOWN_TIMEOUT"]; v != "" {
			return time.ParseDuration(v)
		}
		final := 10 * time.Minute
		if v := env["SMTP_FINAL_TIMEOUT"]; v != "" {
			var err error
			if final, err = time.ParseDuration(v); err != nil {
				return 0, err
			}
		}
		return final + 30*time.Second, nil
	}
	var problems []string
	if svc := d.compose.Services["mail-worker"]; svc != nil {
		want, err := budget(d.composeEnvOf("mail-worker"))
		grace, gerr := time.ParseDuration(cmp.Or(svc.StopGracePeriod, "10s"))
		switch {
		case err != nil || gerr != nil:
			problems = append(problems, fmt.Sprintf("docker-compose.yml: mail-worker: %v %v", err, gerr))
		case grace < want:
			problems = append(problems, fmt.Sprintf("docker-compose.yml: mail-worker: stop_grace_period %s is shorter than its shutdown budget %s", grace, want))
		}
	}
	for _, w := range d.kubeObjects("Deployment") {
		if w.Metadata.Name != "mail-worker" || w.workload == nil {
			continue
		}
		for _, c := range w.workload.Template.Spec.Containers {
			env, envProblems := d.kubeEnv(w, c)
			problems = append(problems, envProblems...)
			want, err := budget(env)
			grace := 30 * time.Second
			if g := w.workload.Template.Spec.TerminationGracePeriodSeconds; g != nil {
				grace = time.Duration(*g) * time.Second
			}
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("%s: mail-worker: %v", w.file, err))
			case grace < want:
				problems = append(problems, fmt.Sprintf("%s: mail-worker: terminationGracePeriodSeconds %s is shorter than its shutdown budget %s", w.file, grace, want))
			}
		}
	}
	return problems
}
