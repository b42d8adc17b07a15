package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose loads docker-compose.yml (content) as `docker compose` does in
// root on a fresh checkout: validated against the Compose Specification's
// schema (an unknown or misspelt key fails), ${VAR:-default} interpolated with
// no .env and nothing exported, paths resolved against root, and every
// depends_on, volume, network, secret and config a service names defined.
func loadCompose(ctx context.Context, root string, content []byte) (*types.Project, error) {
	return loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "docker-compose.yml"), Content: content}},
		Environment: types.Mapping{},
	})
}

// composeChecks are what `docker compose up` needs of docker-compose.yml, the
// Dockerfiles and the files compose mounts, beyond what its loader enforces.
// It is a table, one entry per check, hence its length.
func composeChecks() []deployCheck {
	return []deployCheck{
		{"every compose service that builds has its Dockerfile", composeBuildsHaveDockerfiles, []deployMistake{
			{"a compose build names a Dockerfile that is not there", func(d *deployment) {
				d.compose.Services["mail-worker"].Build.Dockerfile = "services/mail-worker/Dockerfile.gone"
			}},
		}},
		{"the images listen on 0.0.0.0 by default", imagesListenOnAllInterfaces, []deployMistake{
			{"an image leaves the worker's admin port on loopback", func(d *deployment) {
				d.images["mail-worker"]["WORKER_ADMIN_ADDR"] = "127.0.0.1:9102"
			}},
			{"an image does not set the gateway's admin address", func(d *deployment) {
				delete(d.images["auth-gateway"], "GATEWAY_ADMIN_ADDR")
			}},
		}},
		{"compose binds the services to 0.0.0.0 inside their containers", composeListensOnAllInterfaces, []deployMistake{
			{"compose leaves the gateway on loopback inside its container", func(d *deployment) {
				d.compose.Services["auth-gateway"].Environment["GATEWAY_ADDR"] = new("127.0.0.1:8080")
			}},
			{"the image default leaves the worker on loopback", func(d *deployment) {
				delete(d.compose.Services["mail-worker"].Environment, "WORKER_ADMIN_ADDR")
				d.images["mail-worker"]["WORKER_ADMIN_ADDR"] = "127.0.0.1:9102"
			}},
		}},
		{"compose publishes ports on 127.0.0.1 only, to ports the services listen on", composePortsOnLoopback, []deployMistake{
			{"compose publishes a port on every interface", func(d *deployment) {
				d.compose.Services["mailpit"].Ports[0].HostIP = ""
			}},
			{"compose publishes a port the gateway does not listen on", func(d *deployment) {
				d.compose.Services["auth-gateway"].Environment["GATEWAY_ADMIN_ADDR"] = new("0.0.0.0:9111")
			}},
		}},
		{"every file compose mounts exists", composeMountsExist, []deployMistake{
			{"compose mounts a file that is not in the repository", func(d *deployment) {
				d.compose.Services["dex"].Volumes[0].Source = d.path("deploy/dex/config.yml")
			}},
		}},
		{"the services reach NATS, Dex and the SMTP relay by compose names and ports that exist", composeReferencesResolve, []deployMistake{
			{"the worker's NATS_URL names a wrong port", func(d *deployment) {
				d.compose.Services["mail-worker"].Environment["NATS_URL"] = new("nats://nats:4223")
			}},
			{"the worker's SMTP_HOST is not a compose service", func(d *deployment) {
				d.compose.Services["mail-worker"].Environment["SMTP_HOST"] = new("mailhog")
			}},
			{"the gateway's OIDC_ISSUER is not a compose service", func(d *deployment) {
				d.compose.Services["auth-gateway"].Environment["OIDC_ISSUER"] = new("http://localhost:5556/dex")
			}},
		}},
		{"Prometheus scrapes the services' admin ports by compose name", prometheusScrapesAdminPorts, []deployMistake{
			{"Prometheus scrapes a host that is not a compose service", func(d *deployment) {
				d.prometheus.ScrapeConfigs[0].StaticConfigs[0].Targets[0] = "gateway:9101"
			}},
			{"Prometheus scrapes the gateway's public port instead of its admin port", func(d *deployment) {
				d.prometheus.ScrapeConfigs[0].StaticConfigs[0].Targets[0] = "auth-gateway:8080"
			}},
		}},
		{"Prometheus, Grafana and Dex find their mounted configuration", composeConfigsAreMounted, []deployMistake{
			{"Prometheus rules are not mounted where rule_files looks", func(d *deployment) {
				d.prometheus.RuleFiles = []string{"alerts/*.yml"}
			}},
			{"Grafana's dashboard provider reads a folder nothing is mounted at", func(d *deployment) {
				d.grafana.Providers[0].Options.Path = "/etc/dashboards"
			}},
			{"Grafana's data source names no compose service", func(d *deployment) {
				d.grafana.Datasources[0].URL = "http://localhost:9090"
			}},
			{"Dex is started with a config path nothing is mounted at", func(d *deployment) {
				d.compose.Services["dex"].Command[2] = "/etc/dex/config.yml"
			}},
		}},
		{"the gateway's OIDC settings match the Dex client", dexAcceptsGateway, []deployMistake{
			{"the Dex client's secret differs from the gateway's", func(d *deployment) {
				d.dex.StaticClients[0].Secret = "rotated"
			}},
			{"the gateway's callback is not registered at Dex", func(d *deployment) {
				d.compose.Services["auth-gateway"].Environment["GATEWAY_PUBLIC_URL"] = new("http://127.0.0.1:8080")
			}},
			{"the Dex issuer differs from the gateway's OIDC_ISSUER", func(d *deployment) {
				d.dex.Issuer = "http://localhost:5556/dex"
			}},
			{"Dex has no user to sign in with", func(d *deployment) {
				d.dex.StaticPasswords = nil
			}},
		}},
		{"compose gives the mail-worker its shutdown budget before it kills it", composeWorkerGraceCoversShutdown, []deployMistake{
			{"compose kills the worker after its default 10s", func(d *deployment) {
				worker := d.compose.Services["mail-worker"]
				worker.StopGracePeriod = nil
				d.compose.Services["mail-worker"] = worker
			}},
			{"compose's grace period is shorter than a raised SMTP_FINAL_TIMEOUT", func(d *deployment) {
				d.compose.Services["mail-worker"].Environment["SMTP_FINAL_TIMEOUT"] = new("15m")
			}},
		}},
	}
}

// ---- loading ----

// loadComposeStack loads docker-compose.yml, the ENV of the images it builds
// and the configuration of Prometheus, Grafana and Dex it mounts.
func (d *deployment) loadComposeStack(t *testing.T) {
	t.Helper()
	content, err := os.ReadFile(d.path("docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if d.compose, err = loadCompose(t.Context(), d.root, content); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	d.images = map[string]map[string]string{}
	for name, svc := range d.compose.Services {
		if svc.Build == nil {
			continue
		}
		env, err := dockerfileEnv(dockerfileOf(svc))
		switch {
		case err == nil:
			d.images[name] = env
		case !errors.Is(err, fs.ErrNotExist): // a missing one is composeBuildsHaveDockerfiles's to report
			t.Fatal(err)
		}
	}
	decodeYAMLFile(t, d.path("deploy/prometheus/prometheus.yml"), &d.prometheus)
	provisioning, err := filepath.Glob(d.path("deploy/grafana/provisioning/*/*.yaml"))
	if err != nil || len(provisioning) == 0 {
		t.Fatalf("deploy/grafana/provisioning: no YAML files (%v)", err)
	}
	for _, f := range provisioning {
		var g grafanaProvisioning
		decodeYAMLFile(t, f, &g)
		d.grafana.Datasources = append(d.grafana.Datasources, g.Datasources...)
		d.grafana.Providers = append(d.grafana.Providers, g.Providers...)
	}
	// Dex's configuration is whatever file compose mounts where its command
	// says; composeConfigsAreMounted reports when that is not a file here.
	if dex, ok := d.serviceByImage("ghcr.io/dexidp/dex"); ok && len(dex.Command) > 0 {
		if host := hostPathOf(dex, dex.Command[len(dex.Command)-1]); host != "" && exists(host) {
			decodeYAMLFile(t, host, &d.dex)
		}
	}
}

// The files of other projects' formats (Prometheus, Grafana, Dex), as far as
// the checks read them; decodeYAMLFile ignores the fields they do not name.

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
	} `yaml:"staticPasswords"`
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

// ---- what a compose service is ----

// dockerfileOf is the Dockerfile a compose service builds from.
func dockerfileOf(svc types.ServiceConfig) string {
	return filepath.Join(svc.Build.Context, cmp.Or(svc.Build.Dockerfile, "Dockerfile"))
}

// composeEnvOf is what a compose service's process sees: its image's ENV
// overridden by the compose environment.
func (d *deployment) composeEnvOf(name string) map[string]string {
	env := maps.Clone(d.images[name])
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, d.compose.Services[name].Environment.ToMapping())
	return env
}

// listenPorts are the container ports a compose service listens on: from
// its *_ADDR variables for Doorbell's services, else what it publishes or
// exposes.
func (d *deployment) listenPorts(name string) []string {
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
		ports = append(ports, strconv.FormatUint(uint64(p.Target), 10))
	}
	return append(ports, svc.Expose...)
}

// serviceByImage is the compose service running an image of repository.
func (d *deployment) serviceByImage(repository string) (types.ServiceConfig, bool) {
	for _, svc := range d.compose.Services {
		if strings.HasPrefix(svc.Image, repository+":") || svc.Image == repository {
			return svc, true
		}
	}
	return types.ServiceConfig{}, false
}

// hostPathOf maps a path inside a compose service's container to the file
// bind-mounted there, or "" when no bind mount covers it.
func hostPathOf(svc types.ServiceConfig, containerPath string) string {
	best, host := "", ""
	for _, m := range svc.Volumes {
		target := path.Clean(m.Target)
		if containerPath != target && !strings.HasPrefix(containerPath, target+"/") {
			continue
		}
		if len(target) <= len(best) {
			continue
		}
		best, host = target, ""
		if m.Type == types.VolumeTypeBind {
			host = filepath.Join(m.Source, filepath.FromSlash(strings.TrimPrefix(containerPath, target)))
		}
	}
	return host
}

func exists(file string) bool {
	_, err := os.Stat(file)
	return err == nil
}

// ---- the checks ----

func composeBuildsHaveDockerfiles(d *deployment) []string {
	var problems []string
	for name, svc := range d.compose.Services {
		if svc.Build == nil {
			continue
		}
		if f := dockerfileOf(svc); !exists(f) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s builds from %s, which does not exist", name, d.rel(f)))
		}
	}
	return problems
}

// imagesListenOnAllInterfaces: the binaries default to loopback, which inside
// a container nobody can reach, so each image sets every documented *_ADDR.
func imagesListenOnAllInterfaces(d *deployment) []string {
	var problems []string
	for _, name := range deployServices() {
		svc, ok := d.compose.Services[name]
		if !ok || svc.Build == nil {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s is not built from a Dockerfile", name))
			continue
		}
		env, ok := d.images[name]
		if !ok {
			continue // composeBuildsHaveDockerfiles reports it
		}
		dockerfile := d.rel(dockerfileOf(svc))
		for v := range d.documented[name] {
			if _, set := env[v]; strings.HasSuffix(v, "_ADDR") && !set {
				problems = append(problems, fmt.Sprintf("%s: no ENV %s=0.0.0.0:<port>, so the image listens on loopback only", dockerfile, v))
			}
		}
		for _, v := range loopbackAddrs(env) {
			problems = append(problems, fmt.Sprintf("%s: ENV %s; an image must listen on 0.0.0.0", dockerfile, v))
		}
	}
	return problems
}

func composeListensOnAllInterfaces(d *deployment) []string {
	var problems []string
	for _, name := range deployServices() {
		for _, v := range loopbackAddrs(d.composeEnvOf(name)) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s listens on %s; inside a container it must bind 0.0.0.0", name, v))
		}
	}
	return problems
}

func composePortsOnLoopback(d *deployment) []string {
	var problems []string
	for name, svc := range d.compose.Services {
		listening := d.listenPorts(name)
		for _, p := range svc.Ports {
			if p.HostIP != "127.0.0.1" {
				problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s publishes container port %d on %q; bind it to 127.0.0.1", name, p.Target, p.HostIP))
			}
			if !slices.Contains(listening, strconv.FormatUint(uint64(p.Target), 10)) {
				problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s publishes container port %d, but listens on %v", name, p.Target, listening))
			}
		}
	}
	return problems
}

// composeMountsExist: Docker creates a missing bind source as an empty
// folder, so a misspelt file name starts a service without its config.
func composeMountsExist(d *deployment) []string {
	var problems []string
	for name, svc := range d.compose.Services {
		for _, m := range svc.Volumes {
			if m.Type == types.VolumeTypeBind && !exists(m.Source) {
				problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s mounts %s, which does not exist", name, d.rel(m.Source)))
			}
		}
	}
	for name, s := range d.compose.Secrets {
		if s.File != "" && !exists(s.File) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: secret %s is read from %s, which does not exist", name, d.rel(s.File)))
		}
	}
	for name, c := range d.compose.Configs {
		if c.File != "" && !exists(c.File) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: config %s is read from %s, which does not exist", name, d.rel(c.File)))
		}
	}
	return problems
}

// composeReferencesResolve: the services find NATS, the identity provider
// and the relay through URLs in their environment, which compose cannot
// check.
func composeReferencesResolve(d *deployment) []string {
	var problems []string
	reaches := func(from, what, host, port string) {
		if _, ok := d.compose.Services[host]; !ok {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s's %s names host %q, which is not a compose service", from, what, host))
		} else if ports := d.listenPorts(host); !slices.Contains(ports, port) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s's %s uses port %s of %s, which listens on %v", from, what, port, host, ports))
		}
	}
	for _, name := range deployServices() {
		env := d.composeEnvOf(name)
		for _, v := range []string{"NATS_URL", "OIDC_ISSUER"} {
			for one := range strings.SplitSeq(env[v], ",") {
				if strings.TrimSpace(one) == "" {
					continue
				}
				host, port, err := endpoint(strings.TrimSpace(one))
				if err != nil {
					problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s: %s: %v", name, v, err))
					continue
				}
				reaches(name, v, host, port)
			}
		}
		if host := env["SMTP_HOST"]; host != "" {
			reaches(name, "SMTP_HOST", host, cmp.Or(env["SMTP_PORT"], "587"))
		}
	}
	return problems
}

func prometheusScrapesAdminPorts(d *deployment) []string {
	const where = "deploy/prometheus/prometheus.yml"
	var problems []string
	scraped := map[string]bool{}
	for _, job := range d.prometheus.ScrapeConfigs {
		for _, sc := range job.StaticConfigs {
			for _, target := range sc.Targets {
				scraped[target] = true
				host, port, err := net.SplitHostPort(target)
				if err != nil {
					problems = append(problems, fmt.Sprintf("%s: job %s: target %q is not host:port", where, job.JobName, target))
					continue
				}
				if _, ok := d.compose.Services[host]; !ok {
					problems = append(problems, fmt.Sprintf("%s: job %s scrapes %q, which is not a compose service", where, job.JobName, host))
				} else if ports := d.listenPorts(host); !slices.Contains(ports, port) {
					problems = append(problems, fmt.Sprintf("%s: job %s scrapes port %s of %s, which listens on %v", where, job.JobName, port, host, ports))
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
				problems = append(problems, fmt.Sprintf("%s: no job scrapes %s:%s (%s of %s)", where, name, port, k, name))
			}
		}
	}
	return problems
}

func composeConfigsAreMounted(d *deployment) []string {
	var problems []string
	// mounted reports unless a file of the repository (want, when given)
	// that exists is bind-mounted at containerPath.
	mounted := func(svc types.ServiceConfig, containerPath, want string) {
		host := hostPathOf(svc, containerPath)
		switch {
		case host == "":
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s has nothing from the repository mounted at %s", svc.Name, containerPath))
		case want != "" && d.rel(host) != want:
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s has %s at %s, want %s", svc.Name, d.rel(host), containerPath, want))
		case !exists(host):
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s: %s (mounted at %s) does not exist", svc.Name, d.rel(host), containerPath))
		}
	}

	if prom, ok := d.serviceByImage("prom/prometheus"); !ok {
		problems = append(problems, "docker-compose.yml: no prom/prometheus service")
	} else {
		const config = "/etc/prometheus/prometheus.yml"
		mounted(prom, config, "deploy/prometheus/prometheus.yml")
		for _, pattern := range d.prometheus.RuleFiles {
			mounted(prom, path.Dir(path.Join(path.Dir(config), pattern)), "")
		}
	}

	if graf, ok := d.serviceByImage("grafana/grafana"); !ok {
		problems = append(problems, "docker-compose.yml: no grafana/grafana service")
	} else {
		mounted(graf, "/etc/grafana/provisioning", "deploy/grafana/provisioning")
		for _, p := range d.grafana.Providers {
			mounted(graf, p.Options.Path, "")
		}
		for _, ds := range d.grafana.Datasources {
			host, port, err := endpoint(ds.URL)
			if _, ok := d.compose.Services[host]; err != nil || !ok || !slices.Contains(d.listenPorts(host), port) {
				problems = append(problems, fmt.Sprintf("deploy/grafana/provisioning: data source %s at %q is not a compose service's port", ds.Name, ds.URL))
			}
		}
	}

	if dex, ok := d.serviceByImage("ghcr.io/dexidp/dex"); !ok {
		problems = append(problems, "docker-compose.yml: no ghcr.io/dexidp/dex service")
	} else if len(dex.Command) == 0 {
		problems = append(problems, "docker-compose.yml: service dex has no command naming its config file")
	} else {
		mounted(dex, dex.Command[len(dex.Command)-1], "deploy/dex/config.yaml")
	}
	return problems
}

func dexAcceptsGateway(d *deployment) []string {
	const where = "deploy/dex/config.yaml"
	if d.dex.Issuer == "" {
		return []string{"docker-compose.yml: the dex service's config file was not found or has no issuer"}
	}
	env := d.composeEnvOf("auth-gateway")
	var problems []string
	if env["OIDC_ISSUER"] != d.dex.Issuer {
		problems = append(problems, fmt.Sprintf("auth-gateway's OIDC_ISSUER %q differs from Dex's issuer %q: discovery and ID tokens would be refused", env["OIDC_ISSUER"], d.dex.Issuer))
	}
	dex, _ := d.serviceByImage("ghcr.io/dexidp/dex")
	if host, port, err := endpoint(d.dex.Issuer); err != nil {
		problems = append(problems, fmt.Sprintf("%s: issuer: %v", where, err))
	} else if _, webPort, _ := net.SplitHostPort(d.dex.Web.HTTP); port != webPort || host != dex.Name {
		problems = append(problems, fmt.Sprintf("%s: issuer %q is not the dex service (%s) on its web port %s", where, d.dex.Issuer, dex.Name, webPort))
	}
	callback := strings.TrimSuffix(cmp.Or(env["GATEWAY_PUBLIC_URL"], "http://127.0.0.1:8080"), "/") + "/auth/callback"
	found := false
	for _, c := range d.dex.StaticClients {
		if c.ID != env["OIDC_CLIENT_ID"] {
			continue
		}
		found = true
		if c.Secret != env["OIDC_CLIENT_SECRET"] {
			problems = append(problems, fmt.Sprintf("%s: client %s's secret differs from auth-gateway's OIDC_CLIENT_SECRET", where, c.ID))
		}
		if !slices.Contains(c.RedirectURIs, callback) {
			problems = append(problems, fmt.Sprintf("%s: client %s does not allow the gateway's callback %s (redirectURIs %v)", where, c.ID, callback, c.RedirectURIs))
		}
	}
	if !found {
		problems = append(problems, fmt.Sprintf("%s: no static client %q (auth-gateway's OIDC_CLIENT_ID)", where, env["OIDC_CLIENT_ID"]))
	}
	if !d.dex.EnablePasswordDB || len(d.dex.StaticPasswords) == 0 {
		problems = append(problems, where+": no password user to sign in with")
	}
	return problems
}

// composeWorkerGraceCoversShutdown: see shutdownBudget.
func composeWorkerGraceCoversShutdown(d *deployment) []string {
	svc, ok := d.compose.Services["mail-worker"]
	if !ok {
		return []string{"docker-compose.yml: no service mail-worker"}
	}
	want, err := shutdownBudget(d.composeEnvOf("mail-worker"))
	if err != nil {
		return []string{"docker-compose.yml: mail-worker: " + err.Error()}
	}
	grace := 10 * time.Second // compose's default
	if svc.StopGracePeriod != nil {
		grace = time.Duration(*svc.StopGracePeriod)
	}
	if grace < want {
		return []string{fmt.Sprintf("docker-compose.yml: mail-worker: stop_grace_period %s is shorter than its shutdown budget %s", grace, want)}
	}
	return nil
}
