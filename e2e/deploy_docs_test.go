package e2e

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// docsChecks hold the deployment files to docs/configuration.md: every
// variable they give a service is one its table documents, so an operator
// can look each one up, and a misspelt name, which the service would
// silently ignore, fails here.
func docsChecks() []deployCheck {
	return []deployCheck{
		{"compose and the Deployments set only variables docs/configuration.md documents for that service", envIsDocumented, []deployMistake{
			{"compose sets a variable the configuration tables do not document", func(d *deployment) {
				d.compose.Services["auth-gateway"].Environment["GATEWAY_LISTEN"] = new("0.0.0.0:8080")
			}},
			{"compose sets a variable documented only for the other service", func(d *deployment) {
				d.compose.Services["auth-gateway"].Environment["SMTP_HOST"] = new("mailpit")
			}},
			{"an image sets a variable the configuration tables do not document", func(d *deployment) {
				d.images["mail-worker"]["WORKER_ADDR"] = "0.0.0.0:9102"
			}},
			{"a ConfigMap sets a variable the configuration tables do not document", func(d *deployment) {
				kubeNamed[*corev1.ConfigMap](d, "mail-worker").Data["SMTP_STARTTLS"] = "true"
			}},
			{"a Deployment sets a *_FILE variable for an undocumented name", func(d *deployment) {
				kubeContainer(d, "mail-worker").Env[0].Name = "SMTP_PASS_FILE"
			}},
			{"the configuration table loses a variable compose sets", func(d *deployment) {
				delete(d.documented["mail-worker"], "SMTP_TLS")
			}},
			{"a Deployment is not one of Doorbell's services", func(d *deployment) {
				kubeNamed[*appsv1.Deployment](d, "mail-worker").Name = "mailer"
			}},
		}},
	}
}

func envIsDocumented(d *deployment) []string {
	var problems []string
	for _, name := range deployServices() {
		if _, ok := d.compose.Services[name]; !ok {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: no service %s", name))
			continue
		}
		for _, v := range d.undocumented(name, d.composeEnvOf(name)) {
			problems = append(problems, fmt.Sprintf("docker-compose.yml: service %s sets %s, which docs/configuration.md does not document for %s", name, v, name))
		}
	}
	deployments := kubeAll[*appsv1.Deployment](d)
	if len(deployments) == 0 {
		problems = append(problems, "deploy/kubernetes: no Deployments")
	}
	for _, dep := range deployments {
		if !slices.Contains(deployServices(), dep.Name) {
			problems = append(problems, fmt.Sprintf("%s is not one of %v, so no configuration table applies", d.where(dep), deployServices()))
			continue
		}
		for _, c := range dep.Spec.Template.Spec.Containers {
			env, missing := d.kubeEnv(dep, &c)
			problems = append(problems, missing...)
			for _, v := range d.undocumented(dep.Name, env) {
				problems = append(problems, fmt.Sprintf("%s sets %s, which docs/configuration.md does not document for %s", d.where(dep), v, dep.Name))
			}
		}
	}
	return problems
}

// undocumented reports the variables of env that section of
// docs/configuration.md does not document; NAME_FILE counts as documented
// when NAME is.
func (d *deployment) undocumented(section string, env map[string]string) []string {
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

// documentedVariables reads the tables of docs/configuration.md: under each
// "## <service>" heading, rows start with "| `NAME`" or "| `A`, `B`". Each of
// sections must have a table.
func documentedVariables(file string, sections []string) (map[string]map[string]bool, error) {
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
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, s := range sections {
		if len(vars[s]) == 0 {
			return nil, fmt.Errorf("%s: no \"## %s\" table of variables", file, s)
		}
	}
	return vars, nil
}
