// Package ledger is the mail-worker's memory of each person: when they
// first signed in, the browsers they used, and every email the worker
// decided to send them with where it stands (sending, to be retried, sent,
// given up). One record per person, in one JetStream key-value bucket
// (Store), written with compare-and-set before each send (the claim) and
// after a send that failed: it is at once the duplicate guard, the claim
// that keeps two handlers from sending the same email, and the state that
// decides what the next sign-in deserves. A send the relay accepted is
// not written: the message's acknowledgement records it, and a claim whose
// message JetStream has acknowledged reads as sent (Acks).
//
// The rules (Decide, Claim, Record.Finish) are pure: no I/O and no clock.
// Time comes from the sign-ins themselves (authenticated_at) and
// ownership from JetStream's delivery counts, so that no worker's clock is
// ever compared with another's or with the server's.
package ledger

import (
	"slices"
	"time"
)

// Kind names what to send for one sign-in.
type Kind string

const (
	// Welcome goes to a person seen for the first time.
	Welcome Kind = "welcome"
	// NewDevice is a security alert: a known person signed in from a
	// browser not seen before.
	NewDevice Kind = "new_device"
	// None means there is nothing to send.
	None Kind = "none"
)

// Limits of a record.
const (
	// MaxDevices bounds Record.Devices; the least recently used go first.
	MaxDevices = 20
	// MaxEmails bounds Record.Emails; the oldest settled ones go first.
	// Emails still being sent or retried are never dropped.
	MaxEmails = 50
	// KeepSettled is how long a sent or folded email stays in the record,
	// counted from its sign-in to the person's newest one: longer than an
	// event stays in AUTH_EVENTS by default (7 days), so that a late
	// redelivery or copy still finds it and is not sent twice (but see
	// Gone for a copy whose original an operator deleted).
	KeepSettled = 31 * 24 * time.Hour
	// KeepGivenUp is the same for a given-up (failed) email: longer than
	// its dead letter can live after the sign-in (up to a 30-day retry
	// horizon to give up, then 30 days in MAIL_DEADLETTER), so that a
	// redrive still finds it and sends it rather than deciding afresh,
	// which would send nothing to a device already remembered.
	KeepGivenUp = 61 * 24 * time.Hour
	// MaxHeld bounds the sign-ins a record keeps with their details while
	// they wait for an alert: held, or folded into an alert not yet sent
	// or given up (one being retried for days keeps its own). Beyond it a
	// sign-in from a new device inside the alert window is only counted
	// (Record.MoreHeld), and the next alert tells of it by number: a flood
	// of sign-ins cannot grow a record past what NATS can store, which
	// would stop every email to the person.
	MaxHeld = 20
	// MaxCounted bounds Record.Counted: enough for the deliveries a crash
	// can leave unacknowledged.
	MaxCounted = 100
	// MaxAbandoned is how often deliveries of one email may end with the
	// worker gone (crashed, killed, hung past AckWait) while it was being
	// sent, before the email is given up as poison.
	MaxAbandoned = 3
	// MaxUnsure is how many attempts at one email may end without the
	// relay's answer after the data before it is given up as unconfirmed:
	// sent once more after the first, never a third time.
	MaxUnsure = 2
)

// State is where an email stands.
type State string

const (
	// Sending: a delivery (Email.Seq, Email.Delivery) holds the email and
	// is sending it, or died doing so, or sent it: the relay's acceptance
	// is recorded by acknowledging the message, not in the record. Once
	// the message is at or below the consumer's ack floor, the email is
	// Sent (see Acks).
	Sending State = "sending"
	// Retry: an attempt failed; the next delivery sends it again.
	Retry State = "retry"
	// Sent: the relay accepted it (its message was acknowledged).
	Sent State = "sent"
	// Failed: it was given up and dead-lettered. A redrive (the event in a
	// new message) tries it again.
	Failed State = "failed"
	// Held: a new-device alert that came inside the alert window of the
	// last one; it waits to be told of in the next alert (Policy).
	Held State = "held"
	// Folded: told of in the alert of another event (Email.FoldedInto).
	Folded State = "folded"
)

// Record is what the worker knows about one person, keyed by issuer and
// subject (see Key). It is stored as JSON; first_seen and devices are the
// fields of the records earlier versions wrote, so those are read as they
// are.
type Record struct {
	// FirstSeen is the time of the sign-in that was welcomed (or, in
	// records of earlier versions, when it was handled).
	FirstSeen time.Time `json:"first_seen"`
	// LastSeen is the newest sign-in time recorded.
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Devices holds device ids, least recently used first.
	Devices []string `json:"devices"`
	// Emails holds the emails decided for this person, oldest first.
	Emails []Email `json:"emails,omitempty"`
	// LastAlert is when the last new-device alert was claimed (by the
	// worker's clock): the start of the alert window.
	LastAlert time.Time `json:"last_alert,omitzero"`
	// MoreHeld counts the sign-ins held beyond MaxHeld since the last
	// alert was claimed; the next alert tells of them by number.
	MoreHeld int `json:"more_held,omitempty"`
	// Counted holds the event ids of the last MaxCounted sign-ins counted
	// in MoreHeld, so that a redelivery of one counts nothing again.
	Counted []string `json:"counted,omitempty"`
}

// Email is one email decided for a sign-in.
type Email struct {
	EventID string    `json:"event_id"`
	Kind    Kind      `json:"kind"`
	At      time.Time `json:"at"` // the sign-in's authenticated_at
	State   State     `json:"state"`
	// Seq and Delivery name the delivery that last claimed it: the
	// message's stream sequence and its delivery count. While the state is
	// Sending they are the claim.
	Seq      uint64 `json:"seq"`
	Delivery uint64 `json:"delivery"`
	// Tries counts attempts that failed because of this email (not the
	// relay's outages); it sets the retry delay.
	Tries int `json:"tries,omitempty"`
	// Unsure counts attempts whose outcome is unknown: the connection
	// broke or timed out after the data was sent, before the relay said
	// whether it took the email. After one, the email is sent once more,
	// later; a second one gives it up (the worker's caller decides).
	Unsure int `json:"unsure,omitempty"`
	// Abandoned counts deliveries that died while they held the email.
	Abandoned int `json:"abandoned,omitempty"`
	// Consumer names the consumer that delivered the claiming message
	// (its creation time, set by JetStream; see Acks). Zero in claims of
	// earlier versions.
	Consumer time.Time `json:"consumer,omitzero"`
	// IP and UserAgent describe a Held or Folded sign-in until the alert
	// that tells of it is sent, then they are forgotten (at the person's
	// next record write that finds the alert's message acknowledged).
	IP        string `json:"ip,omitempty"`
	UserAgent string `json:"user_agent,omitempty"`
	// FoldedInto is the event whose alert tells of this one (Folded).
	FoldedInto string `json:"folded_into,omitempty"`
	// More is, for an alert, how many sign-ins it tells of by number
	// only (held beyond MaxHeld), besides its own and the Folded ones.
	More int `json:"more,omitempty"`
}

// SignIn is what the rules need of a user.authenticated event.
type SignIn struct {
	EventID  string
	At       time.Time // authenticated_at
	DeviceID string
	// IP and UserAgent are kept while an alert for it is held.
	IP, UserAgent string
}

// Delivery identifies one delivery of a message by JetStream: the
// message's stream sequence and how often it has been delivered (from 1),
// and when it is handled (the worker's clock, for the alert window only).
type Delivery struct {
	Seq uint64
	Num uint64
	Now time.Time
	// Acks is what JetStream says of the messages before this one.
	Acks Acks
	// Redrive: the message is a dead letter an operator sent again (dlq
	// redrive), the one thing that starts a given-up email afresh.
	Redrive bool
}

// Acks is what JetStream says of the messages that claimed emails: which
// consumer delivers them now (its creation time, which JetStream sets and
// which changes only when the consumer is made anew) and its ack floor,
// at or below which every message is acknowledged or terminated. A
// message whose email is still Sending in the record was acknowledged
// after the relay accepted the email (a give-up writes Failed before it
// terminates), so such an email is Sent (Record.Acked).
type Acks struct {
	Consumer time.Time
	Floor    uint64
}

// Policy shapes the decisions.
type Policy struct {
	// AlertWindow lets one new-device alert per person go out per window:
	// a new device inside the window of the last alert is held and told
	// of in the next one (sent when the window ends, or earlier with
	// another alert). 0: every alert goes out at once.
	AlertWindow time.Duration
}

// holds reports whether a new-device alert at now must wait for the
// window of the last one to end, and until when.
func (p Policy) holds(rec *Record, now time.Time) (time.Time, bool) {
	if p.AlertWindow <= 0 || rec == nil || rec.LastAlert.IsZero() {
		return time.Time{}, false
	}
	if now.Before(rec.LastAlert) {
		// The last alert was claimed by a worker whose clock runs ahead
		// of this one's: no window can be told from that; send.
		return time.Time{}, false
	}
	until := rec.LastAlert.Add(p.AlertWindow)
	return until, now.Before(until)
}

// Decide returns what a sign-in deserves, given the person's record (nil
// when there is none):
//
//   - no record: a welcome;
//   - a sign-in older than the welcomed one (it arrived late, for example
//     from the gateway's spool): nothing, it belongs to the first visit;
//   - a device id that is empty or not among the known ones: an alert (a
//     spurious alert is cheaper than a missed one);
//   - a known device: nothing.
//
// Decide looks at authenticated_at, never at the order of arrival, so an
// event that is late or retried never makes an email describe the wrong
// sign-in.
func Decide(rec *Record, s SignIn) Kind {
	switch {
	case rec == nil:
		return Welcome
	case s.At.Before(rec.FirstSeen):
		return None
	case s.DeviceID == "" || !slices.Contains(rec.Devices, s.DeviceID):
		return NewDevice
	default:
		return None
	}
}

// Remember returns rec (nil for a new person) with the sign-in added: the
// device becomes the most recently used unless the sign-in is older than
// the newest recorded, and the oldest devices beyond MaxDevices are
// forgotten. rec is not modified.
func Remember(rec *Record, s SignIn) Record {
	if rec == nil {
		rec = &Record{FirstSeen: s.At.UTC()}
	}
	next := rec.clone()
	newest := !s.At.Before(next.LastSeen)
	if newest {
		next.LastSeen = s.At.UTC()
	}
	if s.DeviceID != "" {
		known := slices.Contains(next.Devices, s.DeviceID)
		switch {
		case newest:
			next.Devices = append(slices.DeleteFunc(next.Devices, func(d string) bool { return d == s.DeviceID }), s.DeviceID)
		case !known:
			next.Devices = slices.Insert(next.Devices, 0, s.DeviceID)
		}
	}
	if over := len(next.Devices) - MaxDevices; over > 0 {
		next.Devices = slices.Clone(next.Devices[over:])
	}
	if next.Devices == nil {
		next.Devices = []string{}
	}
	return next
}

// clone is a deep copy.
func (r Record) clone() Record {
	r.Devices = slices.Clone(r.Devices)
	r.Emails = slices.Clone(r.Emails)
	r.Counted = slices.Clone(r.Counted)
	return r
}

// Email returns the email decided for eventID, if any.
func (r *Record) Email(eventID string) (Email, bool) {
	if r == nil {
		return Email{}, false
	}
	for _, e := range r.Emails {
		if e.EventID == eventID {
			return e, true
		}
	}
	return Email{}, false
}

// with returns r with e in place of the email of the same event (or added),
// then pruned: settled emails older than KeepSettled (KeepGivenUp when
// failed) before the newest sign-in go, and beyond MaxEmails the oldest
// settled ones.
func (r Record) with(e Email) Record {
	next := r.clone()
	if i := slices.IndexFunc(next.Emails, func(x Email) bool { return x.EventID == e.EventID }); i >= 0 {
		next.Emails[i] = e
	} else {
		next.Emails = append(next.Emails, e)
	}
	// A folded sign-in is settled once the alert that tells of it is.
	waits := next.waitsForAlert()
	settled := func(x Email) bool {
		return x.State == Sent || x.State == Failed || (x.State == Folded && !waits(x))
	}
	next.Emails = slices.DeleteFunc(next.Emails, func(x Email) bool {
		keep := KeepSettled
		if x.State == Failed {
			keep = KeepGivenUp
		}
		return settled(x) && x.At.Before(next.LastSeen.Add(-keep)) && x.EventID != e.EventID
	})
	for over := len(next.Emails) - MaxEmails; over > 0; over-- {
		i := slices.IndexFunc(next.Emails, func(x Email) bool { return settled(x) && x.EventID != e.EventID })
		if i < 0 {
			break
		}
		next.Emails = slices.Delete(next.Emails, i, i+1)
	}
	return next
}

// Step is what a delivery does next, as Claim decides it.
type Step int

const (
	// Send: the delivery holds the email now (Plan.Record says so); send
	// it and then Finish.
	Send Step = iota + 1
	// Nothing: nothing to send; store Plan.Record if Plan.Changed, then
	// acknowledge.
	Nothing
	// Duplicate: the email was sent before; acknowledge.
	Duplicate
	// Wait: another delivery of the same message holds the email and may
	// still be at work; hand the message back for one AckWait.
	Wait
	// Elsewhere: another message carrying the same event (Plan.Email.Seq)
	// holds the email (or sent it), and finishes it: that message stays in
	// the stream until the email is sent, to be retried, or given up.
	// Acknowledge this one, unless that message is gone from the stream:
	// then TakeOver, which sends the email again if that message had sent
	// it (its acknowledgement went with it). (This one cannot wait for the
	// other's acknowledgement: the ack floor passes neither while the one
	// below waits.)
	Elsewhere
	// Terminate: the email was given up and dead-lettered, by this very
	// message (whose termination got lost) or by another copy of the
	// event; terminate this one. Only a redrive sends it again.
	Terminate
	// Poison: deliveries died holding the email MaxAbandoned times; give
	// it up (dead-letter it, then Finish with Failed).
	Poison
	// Unconfirmed: the email's outcome was unknown MaxUnsure times and
	// its give-up could not be stored then; give it up (dead-letter it,
	// then Finish with Failed) without sending it again.
	Unconfirmed
	// Hold: a new-device alert inside the alert window of the last one;
	// store Plan.Record (when Changed) and hand the message back until
	// Plan.Until, when its delivery sends the alerts held meanwhile.
	Hold
	// Told: the sign-in is told of in the alert of another event
	// (Plan.Email.FoldedInto); acknowledge.
	Told
	// Counted: a new-device alert inside the alert window when MaxHeld
	// sign-ins are held already; store Plan.Record (the device
	// remembered, MoreHeld counted) and acknowledge: the next alert tells
	// of it by number.
	Counted
)

// Plan is the outcome of Claim.
type Plan struct {
	Step Step
	Kind Kind
	// Record is the record to store before sending (Send, Poison) or
	// acknowledging (Nothing, when Changed).
	Record  Record
	Changed bool
	// Decided says that Kind was decided now: the event was new to the
	// record.
	Decided bool
	// Email is the email concerned (not for Nothing).
	Email Email
	// Until is when a Hold ends.
	Until time.Time
	// Folded are the sign-ins the alert (Send) tells of besides its own,
	// newest first; NewlyFolded of them joined it now.
	Folded      []Email
	NewlyFolded int
}

// Stores reports whether p stores its Record before the delivery goes on:
// a decision the compare-and-set of that write checks.
func (p Plan) Stores() bool {
	return p.Step == Send || p.Step == Poison || p.Changed
}

// Claim decides what delivery d of the sign-in s does, given the person's
// record (nil when there is none). The caller stores Plan.Record with
// compare-and-set against the revision it read; if another writer came
// first it reads again and asks again.
//
// Ownership follows JetStream's own lease: a message is delivered again
// only after its holder stopped reporting progress for AckWait. A claim
// left by delivery n is therefore taken over by delivery n+2 of the same
// message, after one more AckWait in which the holder could still finish
// its bookkeeping, and counted as abandoned.
//
// New-device alerts follow p: one per person per window (see Policy).
func Claim(rec *Record, s SignIn, d Delivery, p Policy) Plan {
	if rec != nil && slices.Contains(rec.Counted, s.EventID) {
		return Plan{Step: Counted, Kind: NewDevice}
	}
	if e, ok := rec.Email(s.EventID); ok && e.State == Sending && e.Seq != d.Seq {
		// Another message holds it: whether that message is still in the
		// stream says what to do, not the ack floor, which also passes a
		// message deleted before it was acknowledged.
		return Plan{Step: Elsewhere, Kind: e.Kind, Email: e}
	}
	rec = rec.Acked(d.Acks)
	e, ok := rec.Email(s.EventID)
	if !ok {
		kind := Decide(rec, s)
		next := Remember(rec, s)
		if kind == None {
			return Plan{Step: Nothing, Kind: None, Record: next, Changed: rec == nil || !equalSeen(*rec, next), Decided: true}
		}
		e = Email{EventID: s.EventID, Kind: kind, At: s.At.UTC(), State: Sending, Seq: d.Seq, Delivery: d.Num}
		if until, hold := p.holds(rec, d.Now); hold && kind == NewDevice {
			if rec.held() >= MaxHeld {
				next.MoreHeld++
				next.Counted = append(next.Counted, s.EventID)
				if over := len(next.Counted) - MaxCounted; over > 0 {
					next.Counted = slices.Clone(next.Counted[over:])
				}
				return Plan{Step: Counted, Kind: kind, Record: next, Changed: true, Decided: true}
			}
			e.State, e.IP, e.UserAgent = Held, s.IP, s.UserAgent
			return Plan{Step: Hold, Kind: kind, Record: next.with(e), Changed: true, Email: e, Until: until, Decided: true}
		}
		plan := send(next, e, d)
		plan.Decided = true
		return plan
	}
	switch e.State {
	case Sent:
		return Plan{Step: Duplicate, Kind: e.Kind, Email: e}
	case Folded:
		return Plan{Step: Told, Kind: e.Kind, Email: e}
	case Held:
		if until, hold := p.holds(rec, d.Now); hold {
			return Plan{Step: Hold, Kind: e.Kind, Record: *rec, Email: e, Until: until}
		}
		return send(*rec, e, d)
	case Failed:
		if e.Seq == d.Seq || !d.Redrive {
			// Given up by this message, or this is another copy of the
			// event (a re-publish after the duplicate window): a given-up
			// email is never tried again unasked.
			return Plan{Step: Terminate, Kind: e.Kind, Email: e}
		}
		// Redriven: a new message, a fresh start.
		e.Tries, e.Abandoned, e.Unsure = 0, 0, 0
		return send(*rec, e, d)
	case Retry:
		return claim(*rec, e, d)
	}
	// Sending, by this message.
	switch {
	case e.Delivery == d.Num:
		return send(*rec, e, d) // our own claim, written by a retried write
	case d.Num <= e.Delivery+1:
		return Plan{Step: Wait, Kind: e.Kind, Email: e}
	}
	return TakeOver(rec, e, d)
}

// Gone decides for a message whose email another message claimed
// (Elsewhere) when that message has left the stream. A claim whose sign-in
// is older than horizon (the retry horizon) was acknowledged: its message
// left by age, and a message still trying by then is given up, which
// writes Failed; the email is sent (Duplicate). A younger one was deleted
// (an operator's purge), perhaps before its email went out: TakeOver. The
// ack floor cannot tell the two apart; it passes both.
func Gone(rec *Record, e Email, d Delivery, horizon time.Duration) Plan {
	if !d.Now.IsZero() && d.Now.Sub(e.At) > horizon {
		return Plan{Step: Duplicate, Kind: e.Kind, Email: e}
	}
	return TakeOver(rec, e, d)
}

// TakeOver claims an email whose holder is gone, counting it abandoned;
// after MaxAbandoned the plan is Poison.
func TakeOver(rec *Record, e Email, d Delivery) Plan {
	e.Abandoned++
	return claim(*rec.Acked(d.Acks), e, d)
}

// claim claims e for delivery d, to send it, or to give it up without
// sending when its counts say so (Poison, Unconfirmed): so is a give-up
// made again whose dead letter could not be stored before.
func claim(rec Record, e Email, d Delivery) Plan {
	p := send(rec, e, d)
	switch {
	case e.Abandoned >= MaxAbandoned:
		p.Step = Poison
	case e.Unsure >= MaxUnsure:
		p.Step = Unconfirmed
	}
	return p
}

// send claims e for delivery d. A new-device alert also takes in every
// held sign-in of the person, and starts a new alert window.
func send(rec Record, e Email, d Delivery) Plan {
	e.State, e.Seq, e.Delivery, e.Consumer = Sending, d.Seq, d.Num, d.Acks.Consumer.UTC()
	if e.Kind == NewDevice {
		e.More += rec.MoreHeld // held beyond MaxHeld: told of by number
	}
	next := rec.with(e)
	plan := Plan{Step: Send, Kind: e.Kind, Email: e}
	if e.Kind == NewDevice {
		for i, x := range next.Emails {
			switch {
			case x.State == Held && x.EventID != e.EventID:
				x.State, x.FoldedInto = Folded, e.EventID
				next.Emails[i] = x
				plan.NewlyFolded++
				fallthrough
			case x.State == Folded && x.FoldedInto == e.EventID:
				plan.Folded = append(plan.Folded, x)
			}
		}
		slices.SortFunc(plan.Folded, func(a, b Email) int { return b.At.Compare(a.At) })
		plan.NewlyFolded += next.MoreHeld
		next.MoreHeld = 0
		if !d.Now.IsZero() {
			next.LastAlert = d.Now.UTC()
		}
	}
	plan.Record = next
	return plan
}

// held counts the sign-ins whose details the record keeps for an alert
// (see waitsForAlert).
func (r *Record) held() int {
	waits := r.waitsForAlert()
	n := 0
	for _, e := range r.Emails {
		if waits(e) {
			n++
		}
	}
	return n
}

// waitsForAlert returns a test of whether an email of r is a sign-in that
// waits for an alert: held, or folded into an alert still being sent or
// retried, which must still find it to name it.
func (r Record) waitsForAlert() func(Email) bool {
	inFlight := make(map[string]bool)
	for _, e := range r.Emails {
		if e.State == Sending || e.State == Retry {
			inFlight[e.EventID] = true
		}
	}
	return func(e Email) bool {
		return e.State == Held || (e.State == Folded && inFlight[e.FoldedInto])
	}
}

// equalSeen reports whether a and b know the same devices in the same
// order and the same newest sign-in.
func equalSeen(a, b Record) bool {
	return a.LastSeen.Equal(b.LastSeen) && a.FirstSeen.Equal(b.FirstSeen) && slices.Equal(a.Devices, b.Devices)
}

// Acked returns r with every email Sending by an acknowledged message
// marked Sent, and the details of its sign-in and of those its alert told
// of forgotten; r itself when there is none. A message is acknowledged
// when it is at or below a's floor, or when another consumer than a's
// delivered it: the consumer was deleted and made anew, and with it went
// what it knew; every message it acknowledged is delivered again, and
// counting its claims as sent sends none of them twice. (An email whose
// worker died while sending it just before the consumer was deleted is
// then counted as sent too.)
func (r *Record) Acked(a Acks) *Record {
	acked := func(e Email) bool {
		if e.State != Sending {
			return false
		}
		if !e.Consumer.IsZero() && !a.Consumer.IsZero() && !e.Consumer.Equal(a.Consumer) {
			return true
		}
		return e.Seq <= a.Floor
	}
	if r == nil || !slices.ContainsFunc(r.Emails, acked) {
		return r
	}
	next := r.clone()
	sent := make(map[string]bool)
	for i, e := range next.Emails {
		if acked(e) {
			next.Emails[i].State = Sent
			sent[e.EventID] = true
		}
	}
	for i, e := range next.Emails {
		if sent[e.EventID] || (e.State == Folded && sent[e.FoldedInto]) {
			next.Emails[i].IP, next.Emails[i].UserAgent = "", ""
		}
	}
	return &next
}

// Result is how an attempt at an email ended, for Record.Finish.
type Result int

const (
	// FailedTry: failed because of the email (a 4xx for it, a broken
	// transfer): try again later, counting a try.
	FailedTry Result = iota + 1
	// Unknown: the outcome is unknown (a timeout or broken connection
	// after the data): send it once more, later, counting it in Unsure.
	Unknown
	// NotTried: the attempt never reached the relay, or the relay failed
	// everyone (an outage, a shutdown): try again later, counting nothing.
	NotTried
	// GivenUp: the email was dead-lettered.
	GivenUp
)

// Finish returns the record after the attempt by delivery d at the email
// of eventID failed or was given up (res); changed says whether there is
// anything to store. A delivery that no longer holds the email (another
// took it over, or its own earlier write already finished it) changes
// nothing. (An attempt the relay accepted is not written: the message's
// acknowledgement records it; see Acks.)
func (r Record) Finish(eventID string, d Delivery, res Result) (next Record, changed bool) {
	e, ok := r.Email(eventID)
	if !ok || e.State != Sending || e.Seq != d.Seq || e.Delivery != d.Num {
		return r, false
	}
	switch res {
	case FailedTry:
		e.State = Retry
		e.Tries++
	case Unknown:
		e.State = Retry
		e.Unsure++
	case NotTried:
		e.State = Retry
	case GivenUp:
		e.State = Failed
	}
	return r.with(e), true
}
