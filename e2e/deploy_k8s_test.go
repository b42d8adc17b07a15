package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// kubeFolders hold the manifests, each applied with `kubectl apply -k`.
func kubeFolders() []string { return []string{"deploy/kubernetes", "deploy/nats"} }

// kubeObj is any object of the manifests, as its k8s.io/api type.
type kubeObj interface {
	runtime.Object
	metav1.Object
}

// kubeObject is one object of the manifests and the file it is written in.
type kubeObject struct {
	file string // relative to the repository
	kind string
	obj  kubeObj
}

// decodeKubeManifests decodes every document of a manifest file strictly into
// its k8s.io/api type, as `kubectl apply --validate=strict` would: an unknown
// or duplicated field, a value of the wrong type (an unquoted number in a
// ConfigMap) or a kind of a group not registered here is an error.
func decodeKubeManifests(rel string, content []byte) ([]kubeObject, error) {
	scheme := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(scheme), appsv1.AddToScheme(scheme), policyv1.AddToScheme(scheme)); err != nil {
		return nil, err
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(content)))
	var objs []kubeObject
	for {
		doc, err := docs.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		if j, err := yaml.YAMLToJSON(doc); err == nil && string(j) == "null" {
			continue // only comments
		}
		obj, gvk, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		o, ok := obj.(kubeObj)
		if !ok {
			return nil, fmt.Errorf("%s: %s has no metadata", rel, gvk)
		}
		objs = append(objs, kubeObject{file: rel, kind: gvk.Kind, obj: o})
	}
}

// kustomization is the part of kustomize's Kustomization these folders use,
// decoded strictly: a misspelt field fails, and so does a kustomize field
// this struct lacks; add it here when a kustomization starts using one.
type kustomization struct {
	dir        string
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
	} `json:"labels"`
	Resources          []string             `json:"resources"`
	ConfigMapGenerator []kustomizeGenerator `json:"configMapGenerator"`
	SecretGenerator    []kustomizeGenerator `json:"secretGenerator"`
}

type kustomizeGenerator struct {
	Name  string   `json:"name"`
	Files []string `json:"files"`
}

func decodeKustomization(rel string, content []byte) (*kustomization, error) {
	k := &kustomization{dir: path.Dir(rel)}
	if err := yaml.UnmarshalStrict(content, k); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if k.Kind != "Kustomization" {
		return nil, fmt.Errorf("%s: kind %q, want Kustomization", rel, k.Kind)
	}
	return k, nil
}

// loadKube decodes every YAML file of kubeFolders: kustomization.yaml as a
// kustomization, the rest as manifests.
func (d *deployment) loadKube() error {
	d.kustomizations = map[string]*kustomization{}
	for _, dir := range kubeFolders() {
		for _, name := range yamlFilesIn(d.path(dir)) {
			rel := path.Join(dir, name)
			content, err := os.ReadFile(d.path(rel))
			if err != nil {
				return err
			}
			if name == "kustomization.yaml" {
				if d.kustomizations[dir], err = decodeKustomization(rel, content); err != nil {
					return err
				}
				continue
			}
			objs, err := decodeKubeManifests(rel, content)
			if err != nil {
				return err
			}
			d.kube = append(d.kube, objs...)
		}
	}
	return nil
}

// yamlFilesIn are the names of the YAML files in dir (not below it).
func yamlFilesIn(dir string) []string {
	entries, _ := os.ReadDir(dir) // a missing folder is kustomizationsListTheirFiles's to report
	var names []string
	for _, e := range entries {
		if n := e.Name(); !e.IsDir() && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
			names = append(names, n)
		}
	}
	return names
}

// kubeChecks are what `kubectl apply -k` of deploy/nats and deploy/kubernetes
// needs to give a working Doorbell, beyond what the API types enforce. It is
// a table, one entry per check, hence its length.
func kubeChecks() []deployCheck {
	return []deployCheck{
		{"Deployments bind to 0.0.0.0 on ports their containers declare", kubeListensOnAllInterfaces, []deployMistake{
			{"a ConfigMap leaves the gateway on loopback", func(d *deployment) {
				kubeNamed[*corev1.ConfigMap](d, "auth-gateway").Data["GATEWAY_ADDR"] = "127.0.0.1:8080"
			}},
			{"a ConfigMap moves the gateway to a port its container does not declare", func(d *deployment) {
				kubeNamed[*corev1.ConfigMap](d, "auth-gateway").Data["GATEWAY_ADDR"] = "0.0.0.0:8081"
			}},
			{"a Deployment reads a ConfigMap that does not exist", func(d *deployment) {
				kubeContainer(d, "mail-worker").EnvFrom[0].ConfigMapRef.Name = "worker-config"
			}},
		}},
		{"Deployments probe /healthz and /readyz on the admin port Prometheus scrapes", kubeProbesUseAdminPort, []deployMistake{
			{"the liveness probe asks /readyz", func(d *deployment) {
				kubeContainer(d, "auth-gateway").LivenessProbe.HTTPGet.Path = "/readyz"
			}},
			{"the readiness probe goes to the public port", func(d *deployment) {
				kubeContainer(d, "auth-gateway").ReadinessProbe.HTTPGet.Port = intstr.FromString("http")
			}},
			{"a Deployment has no readiness probe", func(d *deployment) {
				kubeContainer(d, "mail-worker").ReadinessProbe = nil
			}},
			{"the Prometheus annotation names the wrong port", func(d *deployment) {
				kubeNamed[*appsv1.Deployment](d, "mail-worker").Spec.Template.Annotations["prometheus.io/port"] = "9101"
			}},
		}},
		{"pods run as a non-root uid with a read-only root and no capabilities", kubeRunsLockedDown, []deployMistake{
			{"a Deployment may run as root", func(d *deployment) {
				kubeNamed[*appsv1.Deployment](d, "mail-worker").Spec.Template.Spec.SecurityContext.RunAsNonRoot = nil
			}},
			{"a Deployment runs as uid 0", func(d *deployment) {
				kubeContainer(d, "auth-gateway").SecurityContext.RunAsUser = new(int64(0))
			}},
			{"a Deployment keeps its capabilities", func(d *deployment) {
				kubeContainer(d, "auth-gateway").SecurityContext.Capabilities.Drop = nil
			}},
			{"NATS writes to its root file system", func(d *deployment) {
				kubeNamed[*appsv1.StatefulSet](d, "nats").Spec.Template.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem = nil
			}},
		}},
		{"Services target container ports of the pods they select", kubeServicesTargetContainerPorts, []deployMistake{
			{"a Service targets a port no container declares", func(d *deployment) {
				kubeNamed[*corev1.Service](d, "auth-gateway").Spec.Ports[0].TargetPort = intstr.FromInt32(8081)
			}},
			{"a Service selects no pods", func(d *deployment) {
				kubeNamed[*corev1.Service](d, "mail-worker").Spec.Selector["app.kubernetes.io/name"] = "worker"
			}},
		}},
		{"secrets reach the pods only as *_FILE variables, never as values", kubeSecretsAreFiles, []deployMistake{
			{"a ConfigMap carries the OIDC client secret", func(d *deployment) {
				kubeNamed[*corev1.ConfigMap](d, "auth-gateway").Data["OIDC_CLIENT_SECRET"] = "s3cret"
			}},
			{"the SMTP password is an env value", func(d *deployment) {
				kubeContainer(d, "mail-worker").Env[0] = corev1.EnvVar{Name: "SMTP_PASSWORD", Value: "s3cret"}
			}},
			{"the gateway replicas get no shared cookie key", func(d *deployment) {
				c := kubeContainer(d, "auth-gateway")
				c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GATEWAY_COOKIE_KEY_FILE" })
			}},
		}},
		{"every *_FILE variable names a key of a mounted Secret", kubeSecretFilesAreMounted, []deployMistake{
			{"a *_FILE variable names a key the Secret does not have", func(d *deployment) {
				kubeContainer(d, "auth-gateway").Env[0].Value = "/run/secrets/cookie_key"
			}},
			{"a *_FILE variable points outside every mount", func(d *deployment) {
				kubeContainer(d, "mail-worker").Env[0].Value = "/var/run/secrets/smtp-password"
			}},
			{"a Deployment mounts a Secret no manifest defines", func(d *deployment) {
				kubeNamed[*appsv1.Deployment](d, "mail-worker").Spec.Template.Spec.Volumes[0].Secret.SecretName = "smtp"
			}},
		}},
		{"every Deployment has a PodDisruptionBudget that lets a node drain", kubeDisruptionBudgetsAllowDrain, []deployMistake{
			{"a PodDisruptionBudget blocks every drain", func(d *deployment) {
				kubeNamed[*appsv1.Deployment](d, "mail-worker").Spec.Replicas = new(int32(1))
			}},
			{"a Deployment loses its PodDisruptionBudget", func(d *deployment) {
				kubeNamed[*policyv1.PodDisruptionBudget](d, "auth-gateway").Spec.Selector.MatchLabels["app.kubernetes.io/name"] = "gateway"
			}},
		}},
		{"kustomizations list exactly the manifests beside them", kustomizationsListTheirFiles, []deployMistake{
			{"a kustomization lists a file that is not there", func(d *deployment) {
				k := d.kustomizations["deploy/kubernetes"]
				k.Resources = append(k.Resources, "ingress.yaml")
			}},
			{"a kustomization applies the example secret", func(d *deployment) {
				k := d.kustomizations["deploy/kubernetes"]
				k.Resources = append(k.Resources, "secret.example.yaml")
			}},
			{"a kustomization forgets a manifest beside it", func(d *deployment) {
				k := d.kustomizations["deploy/kubernetes"]
				k.Resources = slices.DeleteFunc(k.Resources, func(r string) bool { return r == "mail-worker.yaml" })
			}},
			{"a configMapGenerator reads a file that is not there", func(d *deployment) {
				d.kustomizations["deploy/nats"].ConfigMapGenerator[0].Files[0] = "nats-server.conf"
			}},
		}},
		{"the NATS cluster's routes, Services and replicas fit together", natsClusterIsConsistent, []deployMistake{
			{"the NATS routes miss a member after scaling", func(d *deployment) {
				kubeNamed[*appsv1.StatefulSet](d, "nats").Spec.Replicas = new(int32(5))
			}},
			{"the gateway wants more stream replicas than NATS servers", func(d *deployment) {
				kubeNamed[*corev1.ConfigMap](d, "auth-gateway").Data["NATS_STREAM_REPLICAS"] = "5"
			}},
			{"the services' NATS_URL names no Service", func(d *deployment) {
				kubeNamed[*corev1.ConfigMap](d, "mail-worker").Data["NATS_URL"] = "nats://nats-client:4222"
			}},
			{"the cluster's Service is not headless", func(d *deployment) {
				kubeNamed[*corev1.Service](d, "nats-headless").Spec.ClusterIP = ""
			}},
		}},
		{"Kubernetes gives the mail-worker its shutdown budget before it kills it", kubeWorkerGraceCoversShutdown, []deployMistake{
			{"Kubernetes kills the worker after its default 30s", func(d *deployment) {
				kubeNamed[*appsv1.Deployment](d, "mail-worker").Spec.Template.Spec.TerminationGracePeriodSeconds = nil
			}},
			{"WORKER_SHUTDOWN_TIMEOUT grows past the grace period", func(d *deployment) {
				kubeNamed[*corev1.ConfigMap](d, "mail-worker").Data["WORKER_SHUTDOWN_TIMEOUT"] = "12m"
			}},
		}},
		{"the gateway behind the ingress trusts its X-Forwarded-For", kubeGatewayTrustsItsProxies, []deployMistake{
			{"the gateway trusts no proxy, so everyone behind the ingress is one client", func(d *deployment) {
				delete(kubeNamed[*corev1.ConfigMap](d, "auth-gateway").Data, "GATEWAY_TRUSTED_PROXIES")
			}},
			{"the gateway's trusted proxies do not parse", func(d *deployment) {
				kubeNamed[*corev1.ConfigMap](d, "auth-gateway").Data["GATEWAY_TRUSTED_PROXIES"] = "10.0.0.0/8,ingress-nginx"
			}},
		}},
	}
}

// ---- finding things in the manifests ----

// kubeAll are the objects of type T, in file order.
func kubeAll[T kubeObj](d *deployment) []T {
	var all []T
	for _, o := range d.kube {
		if t, ok := o.obj.(T); ok {
			all = append(all, t)
		}
	}
	return all
}

// kubeNamed is the object of type T called name, or nil.
func kubeNamed[T kubeObj](d *deployment, name string) T {
	for _, t := range kubeAll[T](d) {
		if t.GetName() == name {
			return t
		}
	}
	var none T
	return none
}

// kubeContainer is the first container of the Deployment name.
func kubeContainer(d *deployment, name string) *corev1.Container {
	return &kubeNamed[*appsv1.Deployment](d, name).Spec.Template.Spec.Containers[0]
}

// where names an object for a message: "file: Kind name".
func (d *deployment) where(obj kubeObj) string {
	for _, o := range d.kube {
		if o.obj == obj {
			return fmt.Sprintf("%s: %s %s", o.file, o.kind, obj.GetName())
		}
	}
	return obj.GetName()
}

// workload is a Deployment or a StatefulSet, as the pods it runs.
type workload struct {
	obj      kubeObj
	replicas int
	pod      *corev1.PodTemplateSpec
}

func (d *deployment) workloads() []workload {
	var ws []workload
	for _, o := range d.kube {
		switch w := o.obj.(type) {
		case *appsv1.Deployment:
			ws = append(ws, workload{w, replicas(w.Spec.Replicas), &w.Spec.Template})
		case *appsv1.StatefulSet:
			ws = append(ws, workload{w, replicas(w.Spec.Replicas), &w.Spec.Template})
		}
	}
	return ws
}

// replicas is a workload's replica count, 1 when the manifest leaves it out.
func replicas(n *int32) int {
	if n == nil {
		return 1
	}
	return int(*n)
}

// kubeEnv is what a container's process sees from the manifests: its
// ConfigMaps' keys and its env values. Missing ConfigMaps are reported.
func (d *deployment) kubeEnv(w kubeObj, c *corev1.Container) (env map[string]string, problems []string) {
	env = map[string]string{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			continue
		}
		cm := kubeNamed[*corev1.ConfigMap](d, from.ConfigMapRef.Name)
		if cm == nil {
			problems = append(problems, fmt.Sprintf("%s reads ConfigMap %q, which no manifest defines", d.where(w), from.ConfigMapRef.Name))
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
func containerPort(c *corev1.Container, ref intstr.IntOrString) string {
	for _, p := range c.Ports {
		if (ref.Type == intstr.String && ref.StrVal == p.Name) || (ref.Type == intstr.Int && ref.IntVal == p.ContainerPort) {
			return strconv.Itoa(int(p.ContainerPort))
		}
	}
	return ""
}

// selects reports whether a Service's selector picks pods labelled so; an
// empty selector selects nothing (the Service has no endpoints).
func selects(selector, podLabels map[string]string) bool {
	return len(selector) > 0 && labels.SelectorFromValidatedSet(selector).Matches(labels.Set(podLabels))
}

// ---- the checks ----

func kubeListensOnAllInterfaces(d *deployment) []string {
	var problems []string
	for _, dep := range kubeAll[*appsv1.Deployment](d) {
		for _, c := range dep.Spec.Template.Spec.Containers {
			env, missing := d.kubeEnv(dep, &c)
			problems = append(problems, missing...)
			for _, v := range loopbackAddrs(env) {
				problems = append(problems, fmt.Sprintf("%s listens on %s; in a pod it must bind 0.0.0.0", d.where(dep), v))
			}
			for k, v := range env {
				if _, port, err := net.SplitHostPort(v); err == nil && strings.HasSuffix(k, "_ADDR") && containerPort(&c, intstr.Parse(port)) == "" {
					problems = append(problems, fmt.Sprintf("%s listens on port %s (%s) but its container declares no such port", d.where(dep), port, k))
				}
			}
		}
	}
	return problems
}

func kubeProbesUseAdminPort(d *deployment) []string {
	var problems []string
	for _, dep := range kubeAll[*appsv1.Deployment](d) {
		for _, c := range dep.Spec.Template.Spec.Containers {
			where := fmt.Sprintf("%s, container %s", d.where(dep), c.Name)
			env, _ := d.kubeEnv(dep, &c)
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
				p          *corev1.Probe
			}{{"liveness", "/healthz", c.LivenessProbe}, {"readiness", "/readyz", c.ReadinessProbe}} {
				switch {
				case probe.p == nil || probe.p.HTTPGet == nil:
					problems = append(problems, fmt.Sprintf("%s: no HTTP %s probe", where, probe.kind))
				case probe.p.HTTPGet.Path != probe.path:
					problems = append(problems, fmt.Sprintf("%s: %s probe asks %s, want %s", where, probe.kind, probe.p.HTTPGet.Path, probe.path))
				case containerPort(&c, probe.p.HTTPGet.Port) != adminPort:
					problems = append(problems, fmt.Sprintf("%s: %s probe uses port %s, not the admin port %s", where, probe.kind, probe.p.HTTPGet.Port.String(), adminPort))
				}
			}
			ann := dep.Spec.Template.Annotations
			if ann["prometheus.io/scrape"] != "true" {
				problems = append(problems, where+`: pod template lacks prometheus.io/scrape: "true"`)
			} else if ann["prometheus.io/port"] != adminPort {
				problems = append(problems, fmt.Sprintf("%s: prometheus.io/port is %q, not the admin port %s", where, ann["prometheus.io/port"], adminPort))
			}
		}
	}
	return problems
}

func kubeRunsLockedDown(d *deployment) []string {
	var problems []string
	for _, w := range d.workloads() {
		pod := cmp.Or(w.pod.Spec.SecurityContext, &corev1.PodSecurityContext{})
		for _, c := range w.pod.Spec.Containers {
			where := fmt.Sprintf("%s, container %s", d.where(w.obj), c.Name)
			sc := cmp.Or(c.SecurityContext, &corev1.SecurityContext{})
			if nonRoot := cmp.Or(sc.RunAsNonRoot, pod.RunAsNonRoot); nonRoot == nil || !*nonRoot {
				problems = append(problems, where+": runAsNonRoot is not true")
			}
			// The images name their user ("nonroot"), which the kubelet cannot
			// check against runAsNonRoot: the manifest must give the number.
			if user := cmp.Or(sc.RunAsUser, pod.RunAsUser); user == nil || *user == 0 {
				problems = append(problems, where+": runAsUser must be a non-zero uid")
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				problems = append(problems, where+": readOnlyRootFilesystem is not true")
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				problems = append(problems, where+": allowPrivilegeEscalation is not false")
			}
			if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				problems = append(problems, where+": capabilities do not drop ALL")
			}
		}
	}
	return problems
}

func kubeServicesTargetContainerPorts(d *deployment) []string {
	var problems []string
	for _, svc := range kubeAll[*corev1.Service](d) {
		var selected []workload
		for _, w := range d.workloads() {
			if selects(svc.Spec.Selector, w.pod.Labels) {
				selected = append(selected, w)
			}
		}
		if len(selected) == 0 {
			problems = append(problems, fmt.Sprintf("%s selects %v, which no Deployment or StatefulSet's pods carry", d.where(svc), svc.Spec.Selector))
		}
		for _, w := range selected {
			for _, p := range svc.Spec.Ports {
				target := p.TargetPort
				if target.IntValue() == 0 && target.Type == intstr.Int {
					target = intstr.FromInt32(p.Port)
				}
				declared := slices.ContainsFunc(w.pod.Spec.Containers, func(c corev1.Container) bool { return containerPort(&c, target) != "" })
				if !declared {
					problems = append(problems, fmt.Sprintf("%s port %s targets %s, which no container of %s declares", d.where(svc), cmp.Or(p.Name, strconv.Itoa(int(p.Port))), target.String(), d.where(w.obj)))
				}
			}
		}
	}
	return problems
}

// kubeSecretsAreFiles: a secret in a ConfigMap or an env value shows in
// `kubectl describe` and in every copy of the manifests. The services read
// each secret from the file its *_FILE variable names instead. The gateway
// does not start off loopback without a cookie key, and its replicas must
// share one, or a sign-in started on one fails on the other.
func kubeSecretsAreFiles(d *deployment) []string {
	secrets := []string{"GATEWAY_COOKIE_KEY", "GATEWAY_DEVICE_KEY", "OIDC_CLIENT_SECRET", "SMTP_PASSWORD"}
	var problems []string
	for _, dep := range kubeAll[*appsv1.Deployment](d) {
		for _, c := range dep.Spec.Template.Spec.Containers {
			env, _ := d.kubeEnv(dep, &c)
			for _, s := range secrets {
				if _, ok := env[s]; ok {
					problems = append(problems, fmt.Sprintf("%s sets the secret %s as a value; mount it from a Secret and set %s_FILE", d.where(dep), s, s))
				}
			}
			if dep.Name == "auth-gateway" && env["GATEWAY_COOKIE_KEY_FILE"] == "" {
				problems = append(problems, fmt.Sprintf("%s has no GATEWAY_COOKIE_KEY_FILE: off loopback the gateway does not start without a key its replicas share", d.where(dep)))
			}
		}
	}
	return problems
}

func kubeSecretFilesAreMounted(d *deployment) []string {
	var problems []string
	for _, dep := range kubeAll[*appsv1.Deployment](d) {
		spec := dep.Spec.Template.Spec
		for _, c := range spec.Containers {
			env, _ := d.kubeEnv(dep, &c)
			for _, name := range slices.Sorted(maps.Keys(env)) {
				file := env[name]
				if !strings.HasSuffix(name, "_FILE") || file == "" {
					continue
				}
				where := fmt.Sprintf("%s: %s=%s", d.where(dep), name, file)
				var mount *corev1.VolumeMount
				for _, m := range c.VolumeMounts {
					if strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/") && (mount == nil || len(m.MountPath) > len(mount.MountPath)) {
						mount = &m
					}
				}
				if mount == nil {
					problems = append(problems, where+": no volume is mounted there")
					continue
				}
				key := strings.TrimPrefix(strings.TrimPrefix(file, mount.MountPath), "/")
				for _, v := range spec.Volumes {
					if v.Name != mount.Name {
						continue
					}
					keys, problem := d.volumeKeys(v)
					if problem != "" {
						problems = append(problems, where+": "+problem)
					} else if !slices.Contains(keys, key) {
						problems = append(problems, fmt.Sprintf("%s: volume %s has no key %q (keys: %v)", where, v.Name, key, keys))
					}
				}
			}
		}
	}
	return problems
}

// volumeKeys are the file names a Secret or ConfigMap volume holds.
func (d *deployment) volumeKeys(v corev1.Volume) (keys []string, problem string) {
	switch {
	case v.Secret != nil:
		s := kubeNamed[*corev1.Secret](d, v.Secret.SecretName)
		if s == nil {
			return nil, fmt.Sprintf("Secret %s is not defined (not even in secret.example.yaml)", v.Secret.SecretName)
		}
		return slices.Sorted(func(yield func(string) bool) {
			for k := range s.StringData {
				yield(k)
			}
			for k := range s.Data {
				yield(k)
			}
		}), ""
	case v.ConfigMap != nil:
		if cm := kubeNamed[*corev1.ConfigMap](d, v.ConfigMap.Name); cm != nil {
			return slices.Sorted(maps.Keys(cm.Data)), ""
		}
	}
	return nil, ""
}

func kubeDisruptionBudgetsAllowDrain(d *deployment) []string {
	var problems []string
	for _, dep := range kubeAll[*appsv1.Deployment](d) {
		replicas := replicas(dep.Spec.Replicas)
		var budget *policyv1.PodDisruptionBudget
		for _, b := range kubeAll[*policyv1.PodDisruptionBudget](d) {
			if s, err := metav1.LabelSelectorAsSelector(b.Spec.Selector); err == nil && !s.Empty() && s.Matches(labels.Set(dep.Spec.Template.Labels)) {
				budget = b
			}
		}
		if budget == nil {
			problems = append(problems, fmt.Sprintf("%s has no PodDisruptionBudget", d.where(dep)))
			continue
		}
		if m := budget.Spec.MinAvailable; m != nil {
			if n, err := intstr.GetScaledValueFromIntOrPercent(m, replicas, true); err != nil || n >= replicas {
				problems = append(problems, fmt.Sprintf("%s needs %s of %s's %d replicas: no node could ever be drained", d.where(budget), m.String(), dep.Name, replicas))
			}
		}
		if m := budget.Spec.MaxUnavailable; m != nil {
			if n, err := intstr.GetScaledValueFromIntOrPercent(m, replicas, false); err != nil || n < 1 {
				problems = append(problems, fmt.Sprintf("%s allows no disruption", d.where(budget)))
			}
		}
	}
	return problems
}

func kustomizationsListTheirFiles(d *deployment) []string {
	var problems []string
	for _, dir := range kubeFolders() {
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
			case !exists(d.path(path.Join(dir, r))):
				problems = append(problems, fmt.Sprintf("%s: lists %s, which does not exist", where, r))
			}
		}
		for _, g := range slices.Concat(k.ConfigMapGenerator, k.SecretGenerator) {
			for _, f := range g.Files {
				if _, file, ok := strings.Cut(f, "="); ok {
					f = file
				}
				if !exists(d.path(path.Join(dir, f))) {
					problems = append(problems, fmt.Sprintf("%s: generates %s from %s, which does not exist", where, g.Name, f))
				}
			}
		}
		for _, n := range yamlFilesIn(d.path(dir)) {
			if n != "kustomization.yaml" && !strings.Contains(n, ".example.") && !listed[n] {
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
func kubeGatewayTrustsItsProxies(d *deployment) []string {
	dep := kubeNamed[*appsv1.Deployment](d, "auth-gateway")
	if dep == nil {
		return []string{"deploy/kubernetes: no Deployment auth-gateway"}
	}
	env, problems := d.kubeEnv(dep, &dep.Spec.Template.Spec.Containers[0])
	v := env["GATEWAY_TRUSTED_PROXIES"]
	if strings.TrimSpace(v) == "" {
		return append(problems, fmt.Sprintf("%s sets no GATEWAY_TRUSTED_PROXIES: behind the ingress every person would share one rate-limit bucket and one address", d.where(dep)))
	}
	for p := range strings.SplitSeq(v, ",") {
		p = strings.TrimSpace(p)
		if _, err := netip.ParsePrefix(p); err != nil {
			if _, err := netip.ParseAddr(p); err != nil {
				problems = append(problems, fmt.Sprintf("%s: GATEWAY_TRUSTED_PROXIES entry %q is not an address or prefix", d.where(dep), p))
			}
		}
	}
	return problems
}

func natsClusterIsConsistent(d *deployment) []string {
	sts := kubeNamed[*appsv1.StatefulSet](d, "nats")
	if sts == nil {
		return []string{"deploy/nats: no StatefulSet nats"}
	}
	var problems []string
	replicas := replicas(sts.Spec.Replicas)
	if replicas < 3 {
		problems = append(problems, fmt.Sprintf("%s: %d replicas; a JetStream cluster that survives a lost server needs 3", d.where(sts), replicas))
	}
	if headless := kubeNamed[*corev1.Service](d, sts.Spec.ServiceName); headless == nil || headless.Spec.ClusterIP != corev1.ClusterIPNone {
		problems = append(problems, fmt.Sprintf("%s: serviceName %q is not a headless Service", d.where(sts), sts.Spec.ServiceName))
	}
	problems = append(problems, d.natsRoutesNameEveryReplica(sts, replicas)...)

	// Both services reach NATS through a Service, and their streams fit.
	for _, name := range deployServices() {
		dep := kubeNamed[*appsv1.Deployment](d, name)
		if dep == nil {
			continue
		}
		env, _ := d.kubeEnv(dep, &dep.Spec.Template.Spec.Containers[0])
		host, port, err := endpoint(cmp.Or(env["NATS_URL"], "nats://127.0.0.1:4222"))
		svc := kubeNamed[*corev1.Service](d, host)
		if err != nil || svc == nil || !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return strconv.Itoa(int(p.Port)) == port }) {
			problems = append(problems, fmt.Sprintf("%s: NATS_URL %q is not a Service port of the manifests", d.where(dep), env["NATS_URL"]))
		}
		if r := env["NATS_STREAM_REPLICAS"]; r != "" && r != "auto" {
			if n, err := strconv.Atoi(r); err != nil || n > replicas {
				problems = append(problems, fmt.Sprintf("%s: NATS_STREAM_REPLICAS=%s, but NATS has %d servers", d.where(dep), r, replicas))
			}
		}
	}
	return problems
}

// natsRoutesNameEveryReplica holds the routes of nats.conf, which the pods
// read from the ConfigMap a kustomization generates, to one per replica
// through the headless Service.
func (d *deployment) natsRoutesNameEveryReplica(sts *appsv1.StatefulSet, replicas int) []string {
	conf := ""
	for _, v := range sts.Spec.Template.Spec.Volumes {
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
		return []string{fmt.Sprintf("%s: its config volume comes from no configMapGenerator file that exists (%q)", d.where(sts), conf)}
	}
	clusterPort := ""
	for _, c := range sts.Spec.Template.Spec.Containers {
		clusterPort = cmp.Or(containerPort(&c, intstr.FromString("cluster")), clusterPort)
	}
	var want, got []string
	for i := range replicas {
		want = append(want, fmt.Sprintf("nats-%d.%s:%s", i, sts.Spec.ServiceName, clusterPort))
	}
	for _, m := range regexp.MustCompile(`nats://([^\s,\]]+)`).FindAllStringSubmatch(string(b), -1) {
		got = append(got, m[1])
	}
	if !slices.Equal(want, got) {
		return []string{fmt.Sprintf("%s: routes %v, want one per replica %v", conf, got, want)}
	}
	return nil
}

// kubeWorkerGraceCoversShutdown: see shutdownBudget.
func kubeWorkerGraceCoversShutdown(d *deployment) []string {
	dep := kubeNamed[*appsv1.Deployment](d, "mail-worker")
	if dep == nil {
		return []string{"deploy/kubernetes: no Deployment mail-worker"}
	}
	var problems []string
	for _, c := range dep.Spec.Template.Spec.Containers {
		env, missing := d.kubeEnv(dep, &c)
		problems = append(problems, missing...)
		want, err := shutdownBudget(env)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", d.where(dep), err))
			continue
		}
		grace := 30 * time.Second // Kubernetes' default
		if g := dep.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
			grace = time.Duration(*g) * time.Second
		}
		if grace < want {
			problems = append(problems, fmt.Sprintf("%s: terminationGracePeriodSeconds %s is shorter than its shutdown budget %s", d.where(dep), grace, want))
		}
	}
	return problems
}
