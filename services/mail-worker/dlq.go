package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	eventsv1 "github.com/doorbell/doorbell/proto/events/v1"
	"github.com/doorbell/doorbell/services/mail-worker/internal/config"
	"github.com/doorbell/doorbell/services/mail-worker/internal/deadletter"
)

const dlqUsage = `usage: mail-worker dlq <command>

Dead letters are sign-in events the worker gave up on, kept in the
MAIL_DEADLETTER stream for 30 days. NATS_URL (or NATS_URL_FILE) names the
server, as for the worker.

commands:
  list                  one line per dead letter: seq, time, reason, attempts,
                        original sequence in AUTH_EVENTS, event id
  show SEQ [--reveal]   headers and event of one dead letter; the email address
                        is masked unless --reveal
  redrive SEQ | --all   publish the event again to user.authenticated (under a
                        new Nats-Msg-Id; the person's record still stops a
                        second email) and delete the dead letter
  purge SEQ | --all     delete one dead letter, or all of them

exit status: 0 done, 1 failed, 2 usage error, 3 no such dead letter
`

// Exit codes of "mail-worker dlq".
const (
	exitOK       = 0
	exitFailed   = 1
	exitUsage    = 2
	exitNotFound = 3
)

// dlqArgs is a parsed dlq command line.
type dlqArgs struct {
	verb   string
	seq    uint64
	all    bool
	reveal bool
}

func parseDLQArgs(args []string) (dlqArgs, error) {
	if len(args) == 0 {
		return dlqArgs{}, errors.New("no command")
	}
	a := dlqArgs{verb: args[0]}
	var positional []string
	for _, arg := range args[1:] {
		switch arg {
		case "--all", "-all":
			a.all = true
		case "--reveal", "-reveal":
			a.reveal = true
		default:
			if strings.HasPrefix(arg, "-") {
				return a, fmt.Errorf("unknown flag %s", arg)
			}
			positional = append(positional, arg)
		}
	}
	needsSeq := false
	switch a.verb {
	case "list":
		if len(positional) > 0 || a.all || a.reveal {
			return a, errors.New("list takes no arguments")
		}
		return a, nil
	case "show":
		if a.all {
			return a, errors.New("show takes one SEQ")
		}
		needsSeq = true
	case "redrive", "purge":
		if a.reveal {
			return a, fmt.Errorf("%s has no --reveal", a.verb)
		}
		if a.all {
			if len(positional) > 0 {
				return a, fmt.Errorf("%s takes SEQ or --all, not both", a.verb)
			}
			return a, nil
		}
		needsSeq = true
	default:
		return a, fmt.Errorf("unknown command %q", a.verb)
	}
	if needsSeq {
		if len(positional) != 1 {
			return a, fmt.Errorf("%s takes one SEQ", a.verb)
		}
		seq, err := strconv.ParseUint(positional[0], 10, 64)
		if err != nil || seq == 0 {
			return a, fmt.Errorf("SEQ %q is not a sequence number", positional[0])
		}
		a.seq = seq
	}
	return a, nil
}

// runDLQ runs "mail-worker dlq args..." and returns the exit status. A
// command has no overall deadline: each of its round trips is bounded on
// its own (JetStream's default timeout), so that a long list or redrive
// runs to its end.
func runDLQ(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, dlqUsage)
		return exitOK
	}
	a, err := parseDLQArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "mail-worker dlq: %v\n\n%s", err, dlqUsage)
		return exitUsage
	}
	url, err := config.NATSURL(getenv)
	if err != nil {
		fmt.Fprintln(stderr, "mail-worker dlq:", err)
		return exitUsage
	}
	nc, err := nats.Connect(url, nats.Name("doorbell-mail-worker-dlq"), nats.Timeout(5*time.Second))
	if err != nil {
		fmt.Fprintf(stderr, "mail-worker dlq: cannot connect to NATS at %s: %v\n", redactURL(url), err)
		return exitFailed
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fmt.Fprintln(stderr, "mail-worker dlq:", err)
		return exitFailed
	}
	q, err := deadletter.Open(ctx, js)
	if err == nil {
		err = a.run(ctx, q, stdout, stderr)
	}
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, deadletter.ErrNotFound):
		fmt.Fprintln(stderr, "mail-worker dlq:", err)
		return exitNotFound
	default:
		fmt.Fprintln(stderr, "mail-worker dlq:", err)
		return exitFailed
	}
}

// run carries out the command on q.
func (a dlqArgs) run(ctx context.Context, q *deadletter.Queue, stdout, stderr io.Writer) error {
	switch {
	case a.verb == "list":
		return dlqList(ctx, q, stdout)
	case a.verb == "show":
		return dlqShow(ctx, q, a.seq, a.reveal, stdout)
	case a.verb == "redrive" && a.all:
		return dlqRedriveAll(ctx, q, stdout, stderr)
	case a.verb == "redrive":
		r, err := q.Redrive(ctx, a.seq)
		if err == nil {
			fmt.Fprintf(stdout, "redriven dead letter %d: event %s is %s sequence %d\n", a.seq, r.EventID, eventsv1.StreamAuthEvents, r.Seq)
		}
		return err
	case a.verb == "purge" && a.all:
		n, err := q.Purge(ctx)
		if err == nil {
			fmt.Fprintf(stdout, "purged %d dead letters\n", n)
		}
		return err
	default: // purge SEQ
		err := q.Delete(ctx, a.seq)
		if err == nil {
			fmt.Fprintf(stdout, "deleted dead letter %d\n", a.seq)
		}
		return err
	}
}

// dlqList prints the dead letters as it reads them, in fixed columns, so
// that a long list starts at once and ends however long it is.
func dlqList(ctx context.Context, q *deadletter.Queue, stdout io.Writer) error {
	const row = "%-8v  %-20s  %-12s  %8v  %12v  %s\n"
	n := 0
	err := q.Each(ctx, func(e deadletter.Entry) error {
		if n == 0 {
			fmt.Fprintf(stdout, row, "SEQ", "TIME", "REASON", "ATTEMPTS", "ORIGINAL SEQ", "EVENT ID")
		}
		n++
		id := e.EventID()
		if id == "" {
			id = "-"
		}
		_, err := fmt.Fprintf(stdout, row, e.Seq, e.Stored.UTC().Format(time.RFC3339), dash(e.Reason), e.Attempts, e.StreamSeq, id)
		return err
	})
	if err == nil && n == 0 {
		fmt.Fprintln(stdout, "no dead letters")
	}
	return err
}

func dlqShow(ctx context.Context, q *deadletter.Queue, seq uint64, reveal bool, stdout io.Writer) error {
	e, err := q.Get(ctx, seq)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dead letter %d, stored %s\n", e.Seq, e.Stored.UTC().Format(time.RFC3339))
	fmt.Fprintln(stdout, "headers:")
	keys := make([]string, 0, len(e.Header))
	for k := range e.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range e.Header[k] {
			fmt.Fprintf(stdout, "  %s: %s\n", k, v)
		}
	}
	if e.Event == nil {
		fmt.Fprintf(stdout, "payload (%d bytes) is not a UserAuthenticated event: %v\n", len(e.Data), e.DecodeErr)
		preview := e.Data[:min(len(e.Data), 200)]
		fmt.Fprintf(stdout, "  %s\n", strconv.Quote(string(preview)))
		return nil
	}
	ev := e.Event
	email := ev.GetEmail()
	if !reveal {
		email = maskEmail(email)
	}
	at := "-"
	if ev.GetAuthenticatedAt().IsValid() {
		at = ev.GetAuthenticatedAt().AsTime().UTC().Format(time.RFC3339Nano)
	}
	fmt.Fprintln(stdout, "event (doorbell.events.v1.UserAuthenticated):")
	for _, f := range [][2]string{
		{"event_id", ev.GetEventId()},
		{"authenticated_at", at},
		{"issuer", ev.GetIssuer()},
		{"subject", ev.GetSubject()},
		{"provider", ev.GetProvider()},
		{"email", email},
		{"name", ev.GetName()},
		{"locale", ev.GetLocale()},
		{"client.ip", ev.GetClient().GetIp()},
		{"client.user_agent", ev.GetClient().GetUserAgent()},
		{"client.device_id", ev.GetClient().GetDeviceId()},
	} {
		fmt.Fprintf(stdout, "  %s: %s\n", f[0], strconv.Quote(f[1]))
	}
	return nil
}

// dlqRedriveAll redrives every letter stored when it starts, as it reads
// them; a letter that fails is reported and the rest go on.
func dlqRedriveAll(ctx context.Context, q *deadletter.Queue, stdout, stderr io.Writer) error {
	var redriven, skipped, failed int
	err := q.Each(ctx, func(e deadletter.Entry) error {
		r, err := q.Redrive(ctx, e.Seq)
		switch {
		case err == nil:
			redriven++
			fmt.Fprintf(stdout, "redriven dead letter %d: event %s is %s sequence %d\n", e.Seq, r.EventID, eventsv1.StreamAuthEvents, r.Seq)
		case errors.Is(err, deadletter.ErrNotRedrivable):
			skipped++
			fmt.Fprintf(stdout, "skipped dead letter %d: %v\n", e.Seq, err)
		default:
			failed++
			fmt.Fprintf(stderr, "dead letter %d: %v\n", e.Seq, err)
		}
		return ctx.Err()
	})
	fmt.Fprintf(stdout, "redriven %d, skipped %d, failed %d\n", redriven, skipped, failed)
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d dead letters could not be redriven", failed)
	}
	return nil
}

// maskEmail keeps the first character of the local part and the domain:
// "ann@example.com" becomes "a**@example.com".
func maskEmail(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 {
		return strings.Repeat("*", len([]rune(addr)))
	}
	local := []rune(addr[:at])
	return string(local[0]) + strings.Repeat("*", len(local)-1) + addr[at:]
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
