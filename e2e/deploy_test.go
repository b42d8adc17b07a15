package e2e

// The deployment files (docker-compose.yml, the Dockerfiles, deploy/) are only
// exercised by people running Docker or Kubernetes, which this machine and CI
// do not have. These tests read them with the ecosystem's own loaders, so a
// misspelt field or a value of the wrong type fails here as it would fail
// `docker compose up` or `kubectl apply`:
//
//   - docker-compose.yml through compose-go, the Compose Specification's
//     loader: schema validation, interpolation, references between services
//     and volumes (deploy_compose_test.go);
//   - deploy/kubernetes and deploy/nats decoded strictly into the k8s.io/api
//     types (deploy_k8s_test.go).
//
// What is left to check is Doorbell's own: variables the configuration
// tables document (deploy_docs_test.go), services that listen on 0.0.0.0 in
// a container but publish on 127.0.0.1 only, probes and scrapes on the admin
// port, secrets through *_FILE, a mail-worker that is given its shutdown
// budget, a gateway that trusts its ingress, a NATS cluster whose routes fit.
//
// Each check returns the problems it found as sentences for an operator and
// lists the mistakes it must notice; TestDeployChecksCatchMistakes makes each
// in a freshly loaded copy, so no check can pass by looking at nothing.

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"
)

// deployServices are the Doorbell services: compose service names, Deployment
// names and "## <name>" sections of docs/configuration.md at once.
func deployServices() []string { return []string{"auth-gateway", "mail-worker"} }

// deployCheck is one property of the deployment files.
type deployCheck struct {
	name     string
	check    func(*deployment) []string
	mistakes []deployMistake // each must make check report a problem
}

// deployMistake is a plausible edit that breaks a deployment; make applies it
// to the loaded files.
type deployMistake struct {
	name string
	make func(*deployment)
}

func deployChecks() []deployCheck {
	return slices.Concat(docsChecks(), composeChecks(), kubeChecks())
}

func TestDeployFiles(t *testing.T) {
	d := loadDeployment(t)
	for _, c := range deployChecks() {
		t.Run(c.name, func(t *testing.T) {
			for _, p := range c.check(d) {
				t.Error(p)
			}
		})
	}
}

func TestDeployChecksCatchMistakes(t *testing.T) {
	for _, c := range deployChecks() {
		if len(c.mistakes) == 0 {
			t.Errorf("%q lists no mistake, so nothing shows it can fail", c.name)
		}
		for _, m := range c.mistakes {
			t.Run(m.name, func(t *testing.T) {
				d := loadDeployment(t)
				if problems := c.check(d); len(problems) > 0 {
					t.Fatalf("the check already fails on the real files, so this case proves nothing: %v", problems)
				}
				m.make(d)
				problems := c.check(d)
				if len(problems) == 0 {
					t.Fatalf("%q did not notice the mistake", c.name)
				}
				t.Logf("noticed: %s", strings.Join(problems, "; "))
			})
		}
	}
}

// TestDeployLoadersAreStrict shows that the loaders refuse what the checks
// no longer look for: each case breaks a real file, which must then fail to
// load.
func TestDeployLoadersAreStrict(t *testing.T) {
	tests := []struct{ name, file, old, new string }{
		{"a misspelt compose key", "docker-compose.yml", "    environment:\n      WORKER_ADMIN_ADDR", "    enviroment:\n      WORKER_ADMIN_ADDR"},
		{"a compose service depends on one that does not exist", "docker-compose.yml", "      mailpit:\n        condition", "      smtp:\n        condition"},
		{"a compose service mounts an undeclared named volume", "docker-compose.yml", "- nats-data:/data", "- nats-state:/data"},
		{"a compose grace period that is not a duration", "docker-compose.yml", "stop_grace_period: 11m", "stop_grace_period: eleven minutes"},
		{"a compose port that is not a port", "docker-compose.yml", `"127.0.0.1:9102:9102"`, `"127.0.0.1:9102:admin"`},
		{"a misspelt manifest field", "deploy/kubernetes/mail-worker.yaml", "  replicas: 2\n", "  replica: 2\n"},
		{"a manifest field given twice", "deploy/kubernetes/mail-worker.yaml", "  replicas: 2\n", "  replicas: 2\n  replicas: 3\n"},
		{"a manifest field at the wrong level", "deploy/kubernetes/mail-worker.yaml", "      terminationGracePeriodSeconds: 660", "      terminationGracePeriod: 660"},
		{"a ConfigMap value that is an unquoted number", "deploy/kubernetes/auth-gateway.yaml", `NATS_STREAM_REPLICAS: "3"`, "NATS_STREAM_REPLICAS: 3"},
		{"a container port given by name", "deploy/kubernetes/mail-worker.yaml", "containerPort: 9102", "containerPort: admin"},
		{"a kind that does not exist", "deploy/nats/nats.yaml", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgets"},
		{"a misspelt kustomization field", "deploy/kubernetes/kustomization.yaml", "resources:", "resource:"},
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	load := func(t *testing.T, file string, content []byte) error {
		var err error
		switch path.Base(file) {
		case "docker-compose.yml":
			_, err = loadCompose(t.Context(), root, content)
		case "kustomization.yaml":
			_, err = decodeKustomization(file, content)
		default:
			_, err = decodeKubeManifests(file, content)
		}
		return err
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			real, err := os.ReadFile(filepath.Join(root, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if err := load(t, tt.file, real); err != nil {
				t.Fatalf("%s as it is: %v", tt.file, err)
			}
			broken := strings.Replace(string(real), tt.old, tt.new, 1)
			if broken == string(real) {
				t.Fatalf("%s no longer contains %q; update this case", tt.file, tt.old)
			}
			if err := load(t, tt.file, []byte(broken)); err == nil {
				t.Fatalf("%s loaded with the mistake", tt.file)
			} else {
				t.Logf("refused: %v", err)
			}
		})
	}
}

// deployment is every deployment file of the repository, loaded. File names
// in it are absolute (compose-go resolves them); messages use d.rel.
type deployment struct {
	root       string
	documented map[string]map[string]bool // docs/configuration.md section ("auth-gateway") → documented variables

	compose    *types.Project
	images     map[string]map[string]string // compose service → ENV of its Dockerfile's final stage
	prometheus prometheusConfig
	grafana    grafanaProvisioning // every file under deploy/grafana/provisioning, merged
	dex        dexConfig           // the file compose mounts into the dex service

	kube           []kubeObject              // deploy/kubernetes and deploy/nats
	kustomizations map[string]*kustomization // by folder, relative to root
}

func loadDeployment(t *testing.T) *deployment {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	d := &deployment{root: root}
	if d.documented, err = documentedVariables(d.path("docs/configuration.md"), deployServices()); err != nil {
		t.Fatal(err)
	}
	d.loadComposeStack(t)
	if err := d.loadKube(); err != nil {
		t.Fatal(err)
	}
	return d
}

// path is the file at rel, a slash-separated path from the repository root.
func (d *deployment) path(rel string) string { return filepath.Join(d.root, filepath.FromSlash(rel)) }

// rel is file as the repository names it, for messages and comparisons.
func (d *deployment) rel(file string) string {
	r, err := filepath.Rel(d.root, file)
	if err != nil {
		return file
	}
	return filepath.ToSlash(r)
}

// decodeYAMLFile decodes file into out, whose yaml tags name the fields to
// read; fields out does not name are ignored.
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

// shutdownBudget is how long the mail-worker may take to stop after SIGTERM:
// WORKER_SHUTDOWN_TIMEOUT, by default SMTP_FINAL_TIMEOUT (10m) + 30s. Compose
// and Kubernetes must wait at least as long before they kill it: a worker
// killed while it waits for the relay's reply to an email the relay already
// has sends that email twice.
func shutdownBudget(env map[string]string) (time.Duration, error) {
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
