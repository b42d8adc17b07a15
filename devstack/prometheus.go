package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"go.yaml.in/yaml/v3"
)

// Prometheus under devstack: files in the data directory, and how often it
// scrapes and evaluates rules (faster than deploy's 15s, so a sign-in shows
// up in a graph within seconds).
const (
	promDir        = "prometheus"
	promConfigFile = "prometheus.yml"
	promStoreDir   = "data"
	promRetention  = "2d"
	promInterval   = "5s"
	// promName labels Prometheus's output lines ("prom    | ") and log
	// records (service=prom).
	promName = "prom"
)

// errPrometheusNotInstalled means the prometheus binary was not found.
var errPrometheusNotInstalled = errors.New("prometheus is not installed")

// prometheusService prepares Prometheus to scrape the two services: it finds
// the binary, checks that its port is free and writes its configuration,
// derived from deploy/prometheus/prometheus.yml, into the data directory.
// An error says why Prometheus cannot run (errPrometheusNotInstalled when
// the binary is missing); the caller runs the stack without it. The service
// is optional: its exit does not stop the stack.
func prometheusService(cfg config) (service, error) {
	bin, err := exec.LookPath(cfg.prometheusBin)
	if err != nil {
		return service{}, fmt.Errorf("%w: %w", errPrometheusNotInstalled, err)
	}
	if err := checkFree(cfg.prometheusAddr); err != nil {
		return service{}, fmt.Errorf("prometheus address %s: %w; is another Prometheus or devstack running? Stop it or pass -prometheus-addr", cfg.prometheusAddr, err)
	}
	deployFile := filepath.Join(cfg.deployDir, "prometheus", "prometheus.yml")
	src, err := os.ReadFile(deployFile)
	if err != nil {
		return service{}, fmt.Errorf("prometheus configuration: %w; run devstack from the repository root or pass -deploy DIR", err)
	}
	conf, err := devstackPrometheusConfig(deployFile, src, map[string]string{
		"auth-gateway": cfg.gwAdminAddr,
		"mail-worker":  cfg.wkAdminAddr,
	})
	if err != nil {
		return service{}, err
	}
	dir, err := filepath.Abs(filepath.Join(cfg.dataDir, promDir))
	if err != nil {
		return service{}, fmt.Errorf("prometheus data directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return service{}, fmt.Errorf("prometheus data directory: %w", err)
	}
	confFile := filepath.Join(dir, promConfigFile)
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		return service{}, fmt.Errorf("write prometheus configuration: %w", err)
	}
	svc := service{
		name: promName,
		path: bin,
		args: []string{
			"--config.file=" + confFile,
			"--web.listen-address=" + cfg.prometheusAddr,
			"--storage.tsdb.path=" + filepath.Join(dir, promStoreDir),
			"--storage.tsdb.retention.time=" + promRetention,
		},
		readyURL: "http://" + cfg.prometheusAddr + "/-/ready",
		optional: true,
	}
	if !cfg.debugLogs {
		svc.hide = routinePrometheusLine
	}
	return svc, nil
}

// promConfig is the part of a Prometheus configuration devstack rewrites;
// everything else is kept as it is.
type promConfig struct {
	Global        map[string]any     `yaml:"global,omitempty"`
	RuleFiles     []string           `yaml:"rule_files,omitempty"`
	ScrapeConfigs []promScrapeConfig `yaml:"scrape_configs"`
	Rest          map[string]any     `yaml:",inline"`
}

type promScrapeConfig struct {
	JobName        string             `yaml:"job_name"`
	ScrapeInterval string             `yaml:"scrape_interval,omitempty"`
	StaticConfigs  []promStaticConfig `yaml:"static_configs"`
	Rest           map[string]any     `yaml:",inline"`
}

type promStaticConfig struct {
	Targets []string `yaml:"targets"`
}

// devstackPrometheusConfig rewrites deploy's Prometheus configuration src,
// read from deployFile, for devstack: each job scrapes only the address
// targets gives for its name (a job devstack has no address for is an
// error, so that a job added to deploy is not silently left out), every
// job scrapes and every rule is evaluated each promInterval, and rule_files
// patterns become absolute paths to deploy's rule files, each of which must
// match at least one file. Job names stay as they are: the rules select on
// them. Everything else is kept.
func devstackPrometheusConfig(deployFile string, src []byte, targets map[string]string) ([]byte, error) {
	var c promConfig
	if err := yaml.Unmarshal(src, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", deployFile, err)
	}
	if len(c.ScrapeConfigs) == 0 {
		return nil, fmt.Errorf("%s: no scrape_configs", deployFile)
	}
	if c.Global == nil {
		c.Global = map[string]any{}
	}
	c.Global["scrape_interval"] = promInterval
	c.Global["evaluation_interval"] = promInterval
	for i := range c.ScrapeConfigs {
		job := &c.ScrapeConfigs[i]
		addr, ok := targets[job.JobName]
		if !ok {
			return nil, fmt.Errorf("%s: job %q: devstack runs nothing by that name to scrape; teach devstack/prometheus.go about it", deployFile, job.JobName)
		}
		job.ScrapeInterval = "" // the global interval applies
		job.StaticConfigs = []promStaticConfig{{Targets: []string{addr}}}
	}
	base, err := filepath.Abs(filepath.Dir(deployFile))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", deployFile, err)
	}
	for i, pattern := range c.RuleFiles {
		if !filepath.IsAbs(pattern) {
			pattern = filepath.Join(base, pattern)
		}
		matches, err := filepath.Glob(pattern)
		if err != nil {
			return nil, fmt.Errorf("%s: rule_files %q: %w", deployFile, c.RuleFiles[i], err)
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("%s: rule_files %q matches no files", deployFile, c.RuleFiles[i])
		}
		c.RuleFiles[i] = pattern
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "# Written by devstack from %s at every start; edit that file instead.\n", deployFile)
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", deployFile, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("%s: %w", deployFile, err)
	}
	return out.Bytes(), nil
}

// routinePrometheusLine reports whether a line of Prometheus's output is a
// routine log record, logged at info or debug level, which devstack hides
// unless LOG_LEVEL=debug. Warnings, errors and anything not in Prometheus's
// log format (a crash, a flag error) are shown. It reads the first level
// field, in the logfmt of Prometheus 2 (level=info) or 3 (level=INFO).
func routinePrometheusLine(line []byte) bool {
	for field := range bytes.FieldsSeq(line) {
		if level, ok := bytes.CutPrefix(field, []byte("level=")); ok {
			return bytes.EqualFold(level, []byte("info")) || bytes.EqualFold(level, []byte("debug"))
		}
	}
	return false
}
