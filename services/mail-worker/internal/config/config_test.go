package config

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/text/language"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDefaultsWorkOnLoopback(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		AdminAddr: "127.0.0.1:9102", NATSURL: "nats://127.0.0.1:4222", NATSReplicas: 0,
		SMTPHost: "localhost", SMTPPort: 587, SMTPAuth: AuthAuto, SMTPTLS: TLSMandatory, SMTPTimeout: 15 * time.Second,
		SMTPFinalTimeout: 10 * time.Minute, SMTPPoolSize: 4, SMTPIdleTimeout: 30 * time.Second,
		MailFrom: "Doorbell <doorbell@localhost>", SiteName: "Doorbell",
		Locale: language.English, TimeZone: time.UTC, AlertWindow: 10 * time.Minute,
		RetryHorizon: 5 * 24 * time.Hour, BackoffBase: 2 * time.Second, BackoffMax: 5 * time.Minute,
		AckWait: 60 * time.Second, ShutdownTimeout: 10*time.Minute + 30*time.Second,
		RelayProbeBase: time.Second, RelayProbeMax: 30 * time.Second,
		LogLevel: slog.LevelInfo, LogFormat: "text",
	}
	if c != want {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "password")
	if err := os.WriteFile(secret, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, c Config)
	}{
		{"implicit TLS defaults to port 465", map[string]string{"SMTP_TLS": "implicit"},
			func(t *testing.T, c Config) {
				if c.SMTPPort != 465 || c.SMTPTLS != TLSImplicit {
					t.Errorf("port %d tls %s", c.SMTPPort, c.SMTPTLS)
				}
			}},
		{"an explicit port wins over the TLS default", map[string]string{"SMTP_TLS": "implicit", "SMTP_PORT": "2465"},
			func(t *testing.T, c Config) {
				if c.SMTPPort != 2465 {
					t.Errorf("port %d", c.SMTPPort)
				}
			}},
		{"TLS mode is case-insensitive", map[string]string{"SMTP_TLS": "Opportunistic"},
			func(t *testing.T, c Config) {
				if c.SMTPTLS != TLSOpportunistic {
					t.Errorf("tls %s", c.SMTPTLS)
				}
			}},
		{"a secret file wins over the variable and loses its newline",
			map[string]string{"SMTP_USERNAME": "u", "SMTP_PASSWORD": "from-env", "SMTP_PASSWORD_FILE": secret},
			func(t *testing.T, c Config) {
				if c.SMTPPassword != "from-file" {
					t.Errorf("password %q", c.SMTPPassword)
				}
			}},
		{"stream replicas for a cluster", map[string]string{"NATS_STREAM_REPLICAS": "3"},
			func(t *testing.T, c Config) {
				if c.NATSReplicas != 3 {
					t.Errorf("replicas %d", c.NATSReplicas)
				}
			}},
		{"auto replicas, spelled out", map[string]string{"NATS_STREAM_REPLICAS": "Auto"},
			func(t *testing.T, c Config) {
				if c.NATSReplicas != 0 {
					t.Errorf("replicas %d, want 0 (auto)", c.NATSReplicas)
				}
			}},
		{"durations, numbers and levels are parsed",
			map[string]string{"WORKER_RETRY_HORIZON": "2d", "WORKER_BACKOFF_BASE": "250ms", "WORKER_BACKOFF_MAX": "1m",
				"WORKER_ACK_WAIT": "2m", "SMTP_TIMEOUT": "20s", "LOG_LEVEL": "debug", "LOG_FORMAT": "json"},
			func(t *testing.T, c Config) {
				if c.RetryHorizon != 48*time.Hour || c.BackoffBase != 250*time.Millisecond || c.BackoffMax != time.Minute ||
					c.AckWait != 2*time.Minute || c.SMTPTimeout != 20*time.Second ||
					c.LogLevel != slog.LevelDebug || c.LogFormat != "json" {
					t.Errorf("got %+v", c)
				}
			}},
		{"language, zone, security page and alert window", map[string]string{"MAIL_LOCALE": "ko_KR",
			"MAIL_TIME_ZONE": "Asia/Seoul", "MAIL_SECURITY_URL": "https://accounts.example.com/security", "MAIL_ALERT_WINDOW": "0"},
			func(t *testing.T, c Config) {
				if c.Locale.String() != "ko-KR" || c.TimeZone.String() != "Asia/Seoul" ||
					c.SecurityURL != "https://accounts.example.com/security" || c.AlertWindow != 0 {
					t.Errorf("got %+v", c)
				}
			}},
		{"the retry horizon also takes a Go duration", map[string]string{"WORKER_RETRY_HORIZON": "90m"},
			func(t *testing.T, c Config) {
				if c.RetryHorizon != 90*time.Minute {
					t.Errorf("horizon %s", c.RetryHorizon)
				}
			}},
		{"the shutdown budget follows a shorter final timeout", map[string]string{"SMTP_FINAL_TIMEOUT": "1m"},
			func(t *testing.T, c Config) {
				if c.SMTPFinalTimeout != time.Minute || c.ShutdownTimeout != 90*time.Second {
					t.Errorf("final %s shutdown %s", c.SMTPFinalTimeout, c.ShutdownTimeout)
				}
			}},
		{"pool, idle timeout, rate limit and probing are parsed",
			map[string]string{"SMTP_POOL_SIZE": "8", "SMTP_IDLE_TIMEOUT": "10s", "SMTP_RATE_LIMIT": "12.5",
				"WORKER_RELAY_PROBE_BASE": "100ms", "WORKER_RELAY_PROBE_MAX": "5s"},
			func(t *testing.T, c Config) {
				if c.SMTPPoolSize != 8 || c.SMTPIdleTimeout != 10*time.Second || c.SMTPRateLimit != 12.5 ||
					c.RelayProbeBase != 100*time.Millisecond || c.RelayProbeMax != 5*time.Second {
					t.Errorf("got %+v", c)
				}
			}},
		{"XOAUTH2 takes a token file", map[string]string{"SMTP_USERNAME": "worker@example.com", "SMTP_AUTH": "XOAUTH2",
			"SMTP_OAUTH2_TOKEN_FILE": secret},
			func(t *testing.T, c Config) {
				if c.SMTPAuth != AuthXOAUTH2 || c.SMTPOAuth2TokenFile != secret {
					t.Errorf("got %+v", c)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(env(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestLoadRejectsBadValues(t *testing.T) {
	emptyFile := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  map[string]string
		want []string // each must appear in the error
	}{
		{"unknown TLS mode", map[string]string{"SMTP_TLS": "starttls"}, []string{`SMTP_TLS="starttls"`, "mandatory, opportunistic, implicit, none"}},
		{"port out of range", map[string]string{"SMTP_PORT": "70000"}, []string{"SMTP_PORT", "between 1 and 65535"}},
		{"not a duration", map[string]string{"SMTP_TIMEOUT": "15"}, []string{"SMTP_TIMEOUT", "not a duration"}},
		{"negative duration", map[string]string{"WORKER_BACKOFF_BASE": "-1s"}, []string{"WORKER_BACKOFF_BASE", "positive"}},
		{"a horizon of no days", map[string]string{"WORKER_RETRY_HORIZON": "0d"}, []string{"WORKER_RETRY_HORIZON", "not a duration"}},
		{"a horizon beyond what the record remembers", map[string]string{"WORKER_RETRY_HORIZON": "40d"}, []string{"WORKER_RETRY_HORIZON", "from 1m to 720h"}},
		{"a shutdown shorter than the final reply", map[string]string{"WORKER_SHUTDOWN_TIMEOUT": "20s"},
			[]string{"WORKER_SHUTDOWN_TIMEOUT", "at least SMTP_FINAL_TIMEOUT (10m0s) + 10s", "raise it to 10m10s"}},
		{"an empty secret file", map[string]string{"NATS_URL_FILE": emptyFile}, []string{"NATS_URL_FILE", "the file is empty"}},
		{"not a language", map[string]string{"MAIL_LOCALE": "english please"}, []string{"MAIL_LOCALE", "not a language tag"}},
		{"not a time zone", map[string]string{"MAIL_TIME_ZONE": "Mars/Olympus"}, []string{"MAIL_TIME_ZONE", "not a time zone name"}},
		{"a security page over http", map[string]string{"MAIL_SECURITY_URL": "http://accounts.example.com/security"}, []string{"MAIL_SECURITY_URL", "https URL"}},
		{"a security page that is not a URL", map[string]string{"MAIL_SECURITY_URL": "/security"}, []string{"MAIL_SECURITY_URL"}},
		{"a negative alert window", map[string]string{"MAIL_ALERT_WINDOW": "-1m"}, []string{"MAIL_ALERT_WINDOW"}},
		{"base above max", map[string]string{"WORKER_BACKOFF_BASE": "10m"}, []string{"must not exceed WORKER_BACKOFF_MAX"}},
		{"ack wait too short to report progress", map[string]string{"WORKER_ACK_WAIT": "500ms"}, []string{"WORKER_ACK_WAIT", "at least 1s"}},
		{"replicas out of range", map[string]string{"NATS_STREAM_REPLICAS": "7"}, []string{"NATS_STREAM_REPLICAS", "auto or a whole number from 1 to 5"}},
		{"bad from", map[string]string{"MAIL_FROM": "not an address"}, []string{"MAIL_FROM"}},
		{"from with a bracket in a quoted local part", map[string]string{"MAIL_FROM": `"a>b"@example.com`}, []string{"MAIL_FROM", "must not contain <, > or spaces"}},
		{"bad admin address", map[string]string{"WORKER_ADMIN_ADDR": "9102"}, []string{"WORKER_ADMIN_ADDR", "host:port"}},
		{"bad log level", map[string]string{"LOG_LEVEL": "loud"}, []string{"LOG_LEVEL"}},
		{"bad log format", map[string]string{"LOG_FORMAT": "xml"}, []string{"LOG_FORMAT"}},
		{"missing CA file", map[string]string{"SMTP_CA_FILE": "/nonexistent/ca.pem"}, []string{"SMTP_CA_FILE"}},
		{"missing templates dir", map[string]string{"MAIL_TEMPLATES_DIR": "/nonexistent"}, []string{"MAIL_TEMPLATES_DIR"}},
		{"missing secret file", map[string]string{"SMTP_PASSWORD_FILE": "/nonexistent/pw"}, []string{"SMTP_PASSWORD_FILE"}},
		{"password without user", map[string]string{"SMTP_PASSWORD": "hunter2"}, []string{"SMTP_USERNAME is empty"}},
		{"unknown AUTH mechanism", map[string]string{"SMTP_USERNAME": "u", "SMTP_AUTH": "ntlm"}, []string{"SMTP_AUTH", "auto, plain, login, cram-md5, xoauth2"}},
		{"AUTH mechanism without a user", map[string]string{"SMTP_AUTH": "login"}, []string{"SMTP_AUTH", "needs SMTP_USERNAME"}},
		{"XOAUTH2 without a token file", map[string]string{"SMTP_USERNAME": "u", "SMTP_AUTH": "xoauth2"}, []string{"needs SMTP_OAUTH2_TOKEN_FILE"}},
		{"a token file without XOAUTH2", map[string]string{"SMTP_USERNAME": "u", "SMTP_OAUTH2_TOKEN_FILE": "/tmp/t"}, []string{"only used with SMTP_AUTH=xoauth2"}},
		{"a missing token file", map[string]string{"SMTP_USERNAME": "u", "SMTP_AUTH": "xoauth2", "SMTP_OAUTH2_TOKEN_FILE": "/nonexistent/token"},
			[]string{"SMTP_OAUTH2_TOKEN_FILE"}},
		{"pool of zero", map[string]string{"SMTP_POOL_SIZE": "0"}, []string{"SMTP_POOL_SIZE", "from 1 to 64"}},
		{"idle timeout at a relay's", map[string]string{"SMTP_IDLE_TIMEOUT": "5m"}, []string{"SMTP_IDLE_TIMEOUT", "below 5m"}},
		{"negative rate", map[string]string{"SMTP_RATE_LIMIT": "-1"}, []string{"SMTP_RATE_LIMIT", "emails per second"}},
		{"probe base above max", map[string]string{"WORKER_RELAY_PROBE_BASE": "1m"}, []string{"must not exceed WORKER_RELAY_PROBE_MAX"}},
		{"every bad value is reported at once", map[string]string{"SMTP_TLS": "x", "LOG_LEVEL": "y"}, []string{"SMTP_TLS", "LOG_LEVEL"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(env(tt.env))
			if err == nil {
				t.Fatal("Load accepted it")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error reveals a secret: %v", err)
			}
		})
	}
}

func TestTraceExportFollowsTheOpenTelemetryVariables(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want bool
	}{
		{"off by default", nil, false},
		{"on with OTEL_TRACES_EXPORTER=otlp", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true},
		{"the exporter name is case-insensitive", map[string]string{"OTEL_TRACES_EXPORTER": "OTLP"}, true},
		{"on with a base endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true},
		{"on with a traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector.example.com/v1/traces"}, true},
		{"none wins over an endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, false},
		{"OTEL_SDK_DISABLED wins over everything", map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false},
		{"OTEL_SDK_DISABLED=false changes nothing", map[string]string{"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, true},
		{"http/json is accepted", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(env(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			if c.TraceExport != tt.want {
				t.Errorf("TraceExport = %v, want %v", c.TraceExport, tt.want)
			}
		})
	}
}

func TestBadOpenTelemetryVariablesAreRefusedClearly(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"grpc is not spoken", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
			[]string{`OTEL_EXPORTER_OTLP_PROTOCOL="grpc"`, "use http/protobuf (port 4318)"}},
		{"grpc for traces alone is not spoken either", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
			[]string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"}},
		{"other exporters are not built in", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"},
			[]string{`OTEL_TRACES_EXPORTER="zipkin"`, "use otlp (OTLP over HTTP) or none"}},
		{"an endpoint must be an http(s) URL", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"},
			[]string{"OTEL_EXPORTER_OTLP_ENDPOINT", "http(s) URL"}},
		{"OTEL_SDK_DISABLED is a boolean", map[string]string{"OTEL_SDK_DISABLED": "yes please"},
			[]string{"OTEL_SDK_DISABLED", "true or false"}},
		{"WORKER_LOG_EMAILS is a boolean", map[string]string{"WORKER_LOG_EMAILS": "sometimes"},
			[]string{"WORKER_LOG_EMAILS", "true or false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(env(tt.env))
			if err == nil {
				t.Fatal("Load accepted it")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	// An endpoint URL may carry credentials: the error never shows it.
	_, err := Load(env(map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector?token=s3cret"}))
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %v: want a refusal that does not echo the URL", err)
	}
}

func TestSettingsOfEarlierVersionsAreNamedAsIgnored(t *testing.T) {
	got := Ignored(env(map[string]string{"WORKER_MAX_DELIVER": "10"}))
	if len(got) != 1 || !strings.Contains(got[0], "WORKER_MAX_DELIVER") || !strings.Contains(got[0], "WORKER_RETRY_HORIZON") {
		t.Errorf("Ignored = %q, want WORKER_MAX_DELIVER pointing to WORKER_RETRY_HORIZON", got)
	}
	if _, err := Load(env(map[string]string{"WORKER_MAX_DELIVER": "10"})); err != nil {
		t.Errorf("an old setting stops the worker: %v", err)
	}
	if got := Ignored(env(nil)); len(got) != 0 {
		t.Errorf("Ignored with nothing set = %q", got)
	}
}

func TestLogEmailsIsOffUnlessAsked(t *testing.T) {
	for v, want := range map[string]bool{"": false, "false": false, "true": true, "1": true} {
		c, err := Load(env(map[string]string{"WORKER_LOG_EMAILS": v}))
		if err != nil {
			t.Fatal(err)
		}
		if c.LogEmails != want {
			t.Errorf("WORKER_LOG_EMAILS=%q: LogEmails = %v, want %v", v, c.LogEmails, want)
		}
	}
}
