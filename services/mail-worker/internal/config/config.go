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
	"net"
	"net/mail"
	"os"
	"strconv"
	"strings"
	"time"
)

// TLS modes accepted in SMTP_TLS.
const (
	TLSMandatory     = "mandatory"
	TLSOpportunistic = "opportunistic"
	TLSImplicit      = "implicit"
	TLSNone          = "none"
)

// Config holds every setting of the mail-worker. The zero value is not
// useful; build one with Load.
type Config struct {
	AdminAddr string // WORKER_ADMIN_ADDR
	NATSURL   string // NATS_URL (may carry credentials: never log it)

	SMTPHost     string        // SMTP_HOST
	SMTPPort     int           // SMTP_PORT
	SMTPUsername string        // SMTP_USERNAME
	SMTPPassword string        // SMTP_PASSWORD (secret)
	SMTPTLS      string        // SMTP_TLS: one of the TLS* constants
	SMTPCAFile   string        // SMTP_CA_FILE
	SMTPTimeout  time.Duration // SMTP_TIMEOUT

	MailFrom     string // MAIL_FROM
	TemplatesDir string // MAIL_TEMPLATES_DIR
	SiteName     string // MAIL_SITE_NAME

	MaxDeliver      int           // WORKER_MAX_DELIVER
	BackoffBase     time.Duration // WORKER_BACKOFF_BASE
	BackoffMax      time.Duration // WORKER_BACKOFF_MAX
	AckWait         time.Duration // WORKER_ACK_WAIT
	ShutdownTimeout time.Duration // WORKER_SHUTDOWN_TIMEOUT

	LogLevel  slog.Level // LOG_LEVEL
	LogFormat string     // LOG_FORMAT: text or json
}

// Load builds a Config from getenv (os.Getenv in production). Files named by
// *_FILE variables are read with os.ReadFile; a trailing newline is dropped.
func Load(getenv func(string) string) (Config, error) {
	l := loader{getenv: getenv}
	c := Config{
		AdminAddr:    l.addr("WORKER_ADMIN_ADDR", "127.0.0.1:9102"),
		NATSURL:      l.secret("NATS_URL", "nats://127.0.0.1:4222"),
		SMTPHost:     l.str("SMTP_HOST", "localhost"),
		SMTPUsername: l.secret("SMTP_USERNAME", ""),
		SMTPPassword: l.secret("SMTP_PASSWORD", ""),
		SMTPTLS: l.oneOf("SMTP_TLS", TLSMandatory,
			TLSMandatory, TLSOpportunistic, TLSImplicit, TLSNone),
		SMTPCAFile:      l.str("SMTP_CA_FILE", ""),
		SMTPTimeout:     l.duration("SMTP_TIMEOUT", 15*time.Second),
		MailFrom:        l.str("MAIL_FROM", "Doorbell <doorbell@localhost>"),
		TemplatesDir:    l.str("MAIL_TEMPLATES_DIR", ""),
		SiteName:        l.str("MAIL_SITE_NAME", "Doorbell"),
		MaxDeliver:      l.positiveInt("WORKER_MAX_DELIVER", 10),
		BackoffBase:     l.duration("WORKER_BACKOFF_BASE", 2*time.Second),
		BackoffMax:      l.duration("WORKER_BACKOFF_MAX", 5*time.Minute),
		AckWait:         l.duration("WORKER_ACK_WAIT", 60*time.Second),
		ShutdownTimeout: l.duration("WORKER_SHUTDOWN_TIMEOUT", 20*time.Second),
		LogLevel:        l.level("LOG_LEVEL", slog.LevelInfo),
		LogFormat:       l.oneOf("LOG_FORMAT", "text", "text", "json"),
	}
	defaultPort := 587
	if c.SMTPTLS == TLSImplicit {
		defaultPort = 465
	}
	c.SMTPPort = l.port("SMTP_PORT", defaultPort)

	if _, err := mail.ParseAddress(c.MailFrom); err != nil {
		l.fail("MAIL_FROM", c.MailFrom, fmt.Errorf("not an email address: %w", err))
	}
	if strings.ContainsAny(c.SiteName, "\r\n") {
		l.fail("MAIL_SITE_NAME", c.SiteName, errors.New("must be one line"))
	}
	if c.SMTPHost == "" {
		l.fail("SMTP_HOST", c.SMTPHost, errors.New("must not be empty"))
	}
	if c.SMTPPassword != "" && c.SMTPUsername == "" {
		l.fail("SMTP_PASSWORD", "(set)", errors.New("is set but SMTP_USERNAME is empty"))
	}
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
	if c.BackoffBase > c.BackoffMax {
		l.fail("WORKER_BACKOFF_BASE", c.BackoffBase.String(),
			fmt.Errorf("must not exceed WORKER_BACKOFF_MAX (%s)", c.BackoffMax))
	}
	// A send may take one SMTP_TIMEOUT to dial and one to transfer; the
	// message must not run past AckWait meanwhile, or JetStream hands it to
	// another replica and the person gets two emails.
	if c.SMTPTimeout > 0 && c.AckWait > 0 && 2*c.SMTPTimeout >= c.AckWait {
		l.fail("WORKER_ACK_WAIT", c.AckWait.String(),
			fmt.Errorf("must be more than twice SMTP_TIMEOUT (%s)", c.SMTPTimeout))
	}
	if err := errors.Join(l.errs...); err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
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

// secret reads NAME_FILE when set (it wins), else NAME. Errors never quote the
// secret itself.
func (l *loader) secret(name, def string) string {
	if path := strings.TrimSpace(l.getenv(name + "_FILE")); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			l.errs = append(l.errs, fmt.Errorf("%s_FILE=%q: %w", name, path, err))
			return ""
		}
		return strings.TrimRight(string(b), "\r\n")
	}
	if v := l.getenv(name); v != "" {
		return v
	}
	return def
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

func (l *loader) positiveInt(name string, def int) int {
	v := l.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		l.fail(name, v, errors.New("must be a whole number of at least 1"))
		return def
	}
	return n
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
