// Package config reads the mail-worker's settings from the environment.
//
// Every setting has a default that works on loopback. A secret may also be
// given as NAME_FILE (the path of a file holding it); the file wins over the
// plain variable. Load reports every bad value at once, each naming the
// variable, so an operator fixes them in one go.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/mail"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/text/language"

	"github.com/doorbell/doorbell/platform/replicas"
	"github.com/doorbell/doorbell/platform/secret"
	"github.com/doorbell/doorbell/platform/telemetry"
)

// TLS modes accepted in SMTP_TLS.
const (
	TLSMandatory     = "mandatory"
	TLSOpportunistic = "opportunistic"
	TLSImplicit      = "implicit"
	TLSNone          = "none"
)

// AUTH mechanisms accepted in SMTP_AUTH.
const (
	AuthAuto    = "auto"
	AuthPlain   = "plain"
	AuthLogin   = "login"
	AuthCRAMMD5 = "cram-md5"
	AuthXOAUTH2 = "xoauth2"
)

// maxPoolSize bounds SMTP_POOL_SIZE; relays limit connections per client
// (often to 10–20) anyway.
const (
	defaultPoolSize = 4
	maxPoolSize     = 64
)

// maxRetryHorizon bounds WORKER_RETRY_HORIZON: with the 30 days a dead
// letter lives, inside the 61 days a person's record remembers a given-up
// email (ledger.KeepGivenUp).
const maxRetryHorizon = 30 * 24 * time.Hour

// Shutdown budget beyond SMTP_FINAL_TIMEOUT: shutdownMargin at least (to
// record, acknowledge and close), defaultShutdownMargin by default.
const (
	shutdownMargin        = 10 * time.Second
	defaultShutdownMargin = 30 * time.Second
)

// removedVariables were settings of earlier versions; set, they are
// ignored with a warning naming what replaced them.
var removedVariables = []struct{ name, instead string }{
	{"WORKER_MAX_DELIVER", "the worker gives up by age, WORKER_RETRY_HORIZON"},
}

// Config holds every setting of the mail-worker. The zero value is not
// useful; build one with Load.
type Config struct {
	AdminAddr string // WORKER_ADMIN_ADDR
	NATSURL   string // NATS_URL (may carry credentials: never log it)
	// NATSReplicas (NATS_STREAM_REPLICAS) is the replica count of the
	// stream and bucket the worker owns: 1 to 5, or 0 for auto (as many as
	// the NATS servers can place, up to 3).
	NATSReplicas int

	SMTPHost            string        // SMTP_HOST
	SMTPPort            int           // SMTP_PORT
	SMTPUsername        string        // SMTP_USERNAME
	SMTPPassword        string        // SMTP_PASSWORD (secret)
	SMTPAuth            string        // SMTP_AUTH: one of the Auth* constants
	SMTPOAuth2TokenFile string        // SMTP_OAUTH2_TOKEN_FILE (read on every connect, never here)
	SMTPTLS             string        // SMTP_TLS: one of the TLS* constants
	SMTPCAFile          string        // SMTP_CA_FILE
	SMTPTimeout         time.Duration // SMTP_TIMEOUT
	SMTPFinalTimeout    time.Duration // SMTP_FINAL_TIMEOUT
	SMTPPoolSize        int           // SMTP_POOL_SIZE
	SMTPIdleTimeout     time.Duration // SMTP_IDLE_TIMEOUT
	SMTPRateLimit       float64       // SMTP_RATE_LIMIT: emails per second, 0 = none

	MailFrom     string // MAIL_FROM
	TemplatesDir string // MAIL_TEMPLATES_DIR
	SiteName     string // MAIL_SITE_NAME
	// Locale (MAIL_LOCALE) is the language of an email when neither the
	// provider's locale nor the browser names one there are templates for.
	Locale language.Tag
	// TimeZone (MAIL_TIME_ZONE) is where the times in emails are shown.
	TimeZone *time.Location
	// SecurityURL (MAIL_SECURITY_URL) is where an alert sends a person who
	// did not sign in; none when empty.
	SecurityURL string
	// AlertWindow (MAIL_ALERT_WINDOW) lets one new-device alert per person
	// go out per window; 0 sends every alert at once.
	AlertWindow time.Duration

	RetryHorizon    time.Duration // WORKER_RETRY_HORIZON
	BackoffBase     time.Duration // WORKER_BACKOFF_BASE
	BackoffMax      time.Duration // WORKER_BACKOFF_MAX
	AckWait         time.Duration // WORKER_ACK_WAIT
	ShutdownTimeout time.Duration // WORKER_SHUTDOWN_TIMEOUT
	RelayProbeBase  time.Duration // WORKER_RELAY_PROBE_BASE
	RelayProbeMax   time.Duration // WORKER_RELAY_PROBE_MAX

	LogLevel  slog.Level // LOG_LEVEL
	LogFormat string     // LOG_FORMAT: text or json
	// LogEmails puts the recipient's address into the info-level line each
	// message logs (WORKER_LOG_EMAILS); off by default.
	LogEmails bool

	// TraceExport says whether spans are exported over OTLP/HTTP: when
	// OTEL_TRACES_EXPORTER is otlp, or an OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT
	// is set and OTEL_TRACES_EXPORTER is not none, unless OTEL_SDK_DISABLED
	// is true. The exporter reads the other OTEL_* variables itself.
	TraceExport bool
}

// Load builds a Config from getenv (os.Getenv in production). Secrets named
// by *_FILE variables are read as secret.Lookup does.
func Load(getenv func(string) string) (Config, error) {
	l := loader{getenv: getenv}
	c := Config{
		AdminAddr:    l.addr("WORKER_ADMIN_ADDR", "127.0.0.1:9102"),
		NATSURL:      l.secret("NATS_URL", "nats://127.0.0.1:4222"),
		NATSReplicas: l.replicas("NATS_STREAM_REPLICAS"),
		SMTPHost:     l.str("SMTP_HOST", "localhost"),
		SMTPUsername: l.secret("SMTP_USERNAME", ""),
		SMTPPassword: l.secret("SMTP_PASSWORD", ""),
		SMTPAuth: l.oneOf("SMTP_AUTH", AuthAuto,
			AuthAuto, AuthPlain, AuthLogin, AuthCRAMMD5, AuthXOAUTH2),
		SMTPOAuth2TokenFile: l.str("SMTP_OAUTH2_TOKEN_FILE", ""),
		SMTPTLS: l.oneOf("SMTP_TLS", TLSMandatory,
			TLSMandatory, TLSOpportunistic, TLSImplicit, TLSNone),
		SMTPCAFile:       l.str("SMTP_CA_FILE", ""),
		SMTPTimeout:      l.duration("SMTP_TIMEOUT", 15*time.Second),
		SMTPFinalTimeout: l.duration("SMTP_FINAL_TIMEOUT", 10*time.Minute),
		SMTPPoolSize:     l.intIn("SMTP_POOL_SIZE", defaultPoolSize, 1, maxPoolSize),
		SMTPIdleTimeout:  l.duration("SMTP_IDLE_TIMEOUT", 30*time.Second),
		SMTPRateLimit:    l.rate("SMTP_RATE_LIMIT"),
		MailFrom:         l.str("MAIL_FROM", "Doorbell <doorbell@localhost>"),
		TemplatesDir:     l.str("MAIL_TEMPLATES_DIR", ""),
		SiteName:         l.str("MAIL_SITE_NAME", "Doorbell"),
		Locale:           l.locale("MAIL_LOCALE", language.English),
		TimeZone:         l.timeZone("MAIL_TIME_ZONE"),
		SecurityURL:      l.securityURL("MAIL_SECURITY_URL"),
		AlertWindow:      l.durationOrZero("MAIL_ALERT_WINDOW", 10*time.Minute),
		RetryHorizon:     l.days("WORKER_RETRY_HORIZON", 5*24*time.Hour),
		BackoffBase:      l.duration("WORKER_BACKOFF_BASE", 2*time.Second),
		BackoffMax:       l.duration("WORKER_BACKOFF_MAX", 5*time.Minute),
		AckWait:          l.duration("WORKER_ACK_WAIT", 60*time.Second),

		RelayProbeBase: l.duration("WORKER_RELAY_PROBE_BASE", time.Second),
		RelayProbeMax:  l.duration("WORKER_RELAY_PROBE_MAX", 30*time.Second),
		LogLevel:       l.level("LOG_LEVEL", slog.LevelInfo),
		LogFormat:      l.oneOf("LOG_FORMAT", "text", "text", "json"),
		LogEmails:      l.boolean("WORKER_LOG_EMAILS", false),
		TraceExport:    l.traceExport(),
	}
	c.SMTPPort = l.smtpPort(c.SMTPTLS)
	c.ShutdownTimeout = l.shutdownTimeout(c.SMTPFinalTimeout)
	// Then the checks of values read above; errors are reported in this
	// order.
	l.checkSender(c)
	l.checkRelay(c)
	l.checkFiles(c)
	l.checkRetry(c)
	if err := errors.Join(l.errs...); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// smtpPort reads SMTP_PORT, whose default follows SMTP_TLS: 465 for
// implicit TLS, else 587.
func (l *loader) smtpPort(tls string) int {
	defaultPort := 587
	if tls == TLSImplicit {
		defaultPort = 465
	}
	return l.port("SMTP_PORT", defaultPort)
}

// shutdownTimeout reads WORKER_SHUTDOWN_TIMEOUT, which must leave room for
// the relay's reply to an email it already has (SMTP_FINAL_TIMEOUT).
func (l *loader) shutdownTimeout(finalTimeout time.Duration) time.Duration {
	// SIGTERM waits for a send whose data the relay has (its final reply
	// may take SMTP_FINAL_TIMEOUT), then records and acknowledges it.
	minShutdown := finalTimeout + shutdownMargin
	d := l.duration("WORKER_SHUTDOWN_TIMEOUT", finalTimeout+defaultShutdownMargin)
	if d < minShutdown {
		l.fail("WORKER_SHUTDOWN_TIMEOUT", d.String(),
			fmt.Errorf("must be at least SMTP_FINAL_TIMEOUT (%s) + %s: a SIGTERM waits for the relay's reply to an email it already has, "+
				"and cutting that wait could send the email twice; raise it to %s or more, or lower SMTP_FINAL_TIMEOUT",
				finalTimeout, shutdownMargin, minShutdown))
	}
	return d
}

// checkSender checks MAIL_FROM (an address the SMTP envelope can carry)
// and MAIL_SITE_NAME (one line), which name the sender in every email.
func (l *loader) checkSender(c Config) {
	if from, err := mail.ParseAddress(c.MailFrom); err != nil {
		l.fail("MAIL_FROM", c.MailFrom, fmt.Errorf("not an email address: %w", err))
	} else if strings.ContainsAny(from.Address, "<> ") {
		// Quoted local parts may hold them, but not the SMTP envelope.
		l.fail("MAIL_FROM", c.MailFrom, errors.New("the address must not contain <, > or spaces"))
	}
	if strings.ContainsAny(c.SiteName, "\r\n") {
		l.fail("MAIL_SITE_NAME", c.SiteName, errors.New("must be one line"))
	}
}

// checkRelay checks that the SMTP_* settings fit together (a host; the
// credentials an AUTH mechanism needs) and the timings of the connections
// to the relay and of its probes.
func (l *loader) checkRelay(c Config) {
	if c.SMTPHost == "" {
		l.fail("SMTP_HOST", c.SMTPHost, errors.New("must not be empty"))
	}
	if c.SMTPPassword != "" && c.SMTPUsername == "" {
		l.fail("SMTP_PASSWORD", "(set)", errors.New("is set but SMTP_USERNAME is empty"))
	}
	if c.SMTPAuth != AuthAuto && c.SMTPUsername == "" {
		l.fail("SMTP_AUTH", c.SMTPAuth, errors.New("needs SMTP_USERNAME"))
	}
	switch {
	case c.SMTPAuth == AuthXOAUTH2 && c.SMTPOAuth2TokenFile == "":
		l.fail("SMTP_AUTH", c.SMTPAuth, errors.New("needs SMTP_OAUTH2_TOKEN_FILE"))
	case c.SMTPAuth != AuthXOAUTH2 && c.SMTPOAuth2TokenFile != "":
		l.fail("SMTP_OAUTH2_TOKEN_FILE", c.SMTPOAuth2TokenFile, errors.New("is only used with SMTP_AUTH=xoauth2"))
	case c.SMTPOAuth2TokenFile != "":
		// Read on every connect; here only its presence is checked.
		if _, err := os.Stat(c.SMTPOAuth2TokenFile); err != nil {
			l.fail("SMTP_OAUTH2_TOKEN_FILE", c.SMTPOAuth2TokenFile, err)
		}
	}
	if c.SMTPIdleTimeout >= 5*time.Minute {
		l.fail("SMTP_IDLE_TIMEOUT", c.SMTPIdleTimeout.String(),
			errors.New("must be below 5m, the shortest idle timeout RFC 5321 allows a relay (many use 60s)"))
	}
	if c.RelayProbeBase > c.RelayProbeMax {
		l.fail("WORKER_RELAY_PROBE_BASE", c.RelayProbeBase.String(),
			fmt.Errorf("must not exceed WORKER_RELAY_PROBE_MAX (%s)", c.RelayProbeMax))
	}
}

// checkFiles checks that SMTP_CA_FILE and MAIL_TEMPLATES_DIR, when set,
// name a file and a directory.
func (l *loader) checkFiles(c Config) {
	if c.SMTPCAFile != "" {
		if _, err := os.Stat(c.SMTPCAFile); err != nil {
			l.fail("SMTP_CA_FILE", c.SMTPCAFile, err)
		}
	}
	if c.TemplatesDir != "" {
		if fi, err := os.Stat(c.TemplatesDir); err != nil {
			l.fail("MAIL_TEMPLATES_DIR", c.TemplatesDir, err)
		} else if !fi.IsDir() {
			l.fail("MAIL_TEMPLATES_DIR", c.TemplatesDir, errors.New("not a directory"))
		}
	}
}

// checkRetry checks the WORKER_* settings of redelivery: the backoff, the
// acknowledgement wait and the retry horizon.
func (l *loader) checkRetry(c Config) {
	if c.BackoffBase > c.BackoffMax {
		l.fail("WORKER_BACKOFF_BASE", c.BackoffBase.String(),
			fmt.Errorf("must not exceed WORKER_BACKOFF_MAX (%s)", c.BackoffMax))
	}
	// A message in hand is reported in progress every third of AckWait.
	if c.AckWait < time.Second {
		l.fail("WORKER_ACK_WAIT", c.AckWait.String(), errors.New("must be at least 1s"))
	}
	if c.RetryHorizon < time.Minute || c.RetryHorizon > maxRetryHorizon {
		l.fail("WORKER_RETRY_HORIZON", c.RetryHorizon.String(),
			fmt.Errorf("must be from 1m to %s (a given-up email is remembered for 61 days, its dead letter for 30; AUTH_EVENTS keeps events 7 days by default)", maxRetryHorizon))
	}
}

// Ignored returns the variables of earlier versions that are set but mean
// nothing any more, each with what replaced it, for a warning at start.
func Ignored(getenv func(string) string) []string {
	var set []string
	for _, v := range removedVariables {
		if strings.TrimSpace(getenv(v.name)) != "" {
			set = append(set, v.name+" (now: "+v.instead+")")
		}
	}
	return set
}

// NATSURL reads only NATS_URL (or NATS_URL_FILE), for commands that need
// nothing else, such as "mail-worker dlq".
func NATSURL(getenv func(string) string) (string, error) {
	l := loader{getenv: getenv}
	url := l.secret("NATS_URL", "nats://127.0.0.1:4222")
	if err := errors.Join(l.errs...); err != nil {
		return "", fmt.Errorf("configuration: %w", err)
	}
	return url, nil
}

// PoolSize reads only SMTP_POOL_SIZE, for settings made before the rest
// of the configuration is loaded; the default when it is unset or wrong
// (Load reports that).
func PoolSize(getenv func(string) string) int {
	l := loader{getenv: getenv}
	return l.intIn("SMTP_POOL_SIZE", defaultPoolSize, 1, maxPoolSize)
}

// loader collects one error per bad variable instead of stopping at the first.
type loader struct {
	getenv func(string) string
	errs   []error
}

func (l *loader) fail(name, value string, err error) {
	l.errs = append(l.errs, fmt.Errorf("%s=%q: %w", name, value, err))
}

func (l *loader) str(name, def string) string {
	if v := strings.TrimSpace(l.getenv(name)); v != "" {
		return v
	}
	return def
}

// secret reads a secret by the rules of secret.Lookup: NAME_FILE when set
// (it wins), else NAME, else def. An empty file is an error, never the
// default. Errors never quote the secret itself.
func (l *loader) secret(name, def string) string {
	v, file, err := secret.Lookup(l.getenv, name)
	switch {
	case err != nil:
		l.fail(name+"_FILE", file, err)
	case file == "" && v == "":
		return def
	}
	return v
}

func (l *loader) oneOf(name, def string, allowed ...string) string {
	v := strings.ToLower(l.str(name, def))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	l.fail(name, v, fmt.Errorf("must be one of %s", strings.Join(allowed, ", ")))
	return def
}

func (l *loader) duration(name string, def time.Duration) time.Duration {
	v := l.str(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		l.fail(name, v, errors.New("not a duration (examples: 500ms, 15s, 5m)"))
		return def
	}
	if d <= 0 {
		l.fail(name, v, errors.New("must be positive"))
		return def
	}
	return d
}

// locale reads a BCP 47 language tag ("en", "ko", "pt-BR").
func (l *loader) locale(name string, def language.Tag) language.Tag {
	v := l.str(name, "")
	if v == "" {
		return def
	}
	tag, err := language.Parse(strings.ReplaceAll(v, "_", "-"))
	if err != nil {
		l.fail(name, v, errors.New("not a language tag (examples: en, ko, pt-BR)"))
		return def
	}
	return tag
}

// timeZone reads an IANA time zone name ("Asia/Seoul"); UTC when unset.
func (l *loader) timeZone(name string) *time.Location {
	v := l.str(name, "UTC")
	loc, err := time.LoadLocation(v)
	if err != nil {
		l.fail(name, v, errors.New("not a time zone name (examples: UTC, Europe/Berlin, Asia/Seoul)"))
		return time.UTC
	}
	return loc
}

// securityURL reads an absolute https URL (http only on loopback).
func (l *loader) securityURL(name string) string {
	v := l.str(name, "")
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && loopbackHost(u.Hostname()))) {
		l.fail(name, v, errors.New("must be an https URL such as https://accounts.example.com/security"))
		return ""
	}
	return u.String()
}

// loopbackHost reports whether host names this machine.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// durationOrZero reads a duration that may also be 0 (off).
func (l *loader) durationOrZero(name string, def time.Duration) time.Duration {
	v := l.str(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		l.fail(name, v, errors.New("not a duration (examples: 10m, 1h; 0 for off)"))
		return def
	}
	return d
}

// days reads a duration that may also be given in whole days ("5d").
func (l *loader) days(name string, def time.Duration) time.Duration {
	v := l.str(name, "")
	if n, ok := strings.CutSuffix(v, "d"); ok {
		d, err := strconv.Atoi(n)
		if err != nil || d < 1 {
			l.fail(name, v, errors.New("not a duration (examples: 5d, 72h, 30m)"))
			return def
		}
		return time.Duration(d) * 24 * time.Hour
	}
	return l.duration(name, def)
}

// replicas reads a replica count (see replicas.Parse).
func (l *loader) replicas(name string) int {
	v := l.str(name, "auto")
	n, err := replicas.Parse(v)
	if err != nil {
		l.fail(name, strings.ToLower(v), err)
	}
	return n
}

func (l *loader) intIn(name string, def, lo, hi int) int {
	v := l.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		l.fail(name, v, fmt.Errorf("must be a whole number from %d to %d", lo, hi))
		return def
	}
	return n
}

// rate reads a non-negative number of events per second; 0 when unset.
func (l *loader) rate(name string) float64 {
	v := l.str(name, "")
	if v == "" {
		return 0
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		l.fail(name, v, errors.New("must be a number of emails per second, 0 for no limit"))
		return 0
	}
	return f
}

func (l *loader) port(name string, def int) int {
	v := l.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		l.fail(name, v, errors.New("must be a port number between 1 and 65535"))
		return def
	}
	return n
}

func (l *loader) addr(name, def string) string {
	v := l.str(name, def)
	if _, _, err := net.SplitHostPort(v); err != nil {
		l.fail(name, v, fmt.Errorf("must be host:port: %w", err))
		return def
	}
	return v
}

func (l *loader) boolean(name string, def bool) bool {
	v := l.str(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		l.fail(name, v, errors.New("must be true or false"))
		return def
	}
	return b
}

// traceExport reads the OpenTelemetry variables that decide whether spans
// are exported (see telemetry.ExportFromEnv).
func (l *loader) traceExport() bool {
	return telemetry.ExportFromEnv(l.getenv, func(name, value string, err error) {
		if value == "" {
			value = "(hidden)"
		}
		l.fail(name, value, err)
	})
}

func (l *loader) level(name string, def slog.Level) slog.Level {
	v := l.str(name, "")
	if v == "" {
		return def
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(v)); err != nil {
		l.fail(name, v, errors.New("must be debug, info, warn or error"))
		return def
	}
	return lvl
}
