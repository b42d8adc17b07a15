package ledger

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

func at(minutes int) time.Time { return t0.Add(time.Duration(minutes) * time.Minute) }

func signIn(id string, minute int, device string) SignIn {
	return SignIn{EventID: id, At: at(minute), DeviceID: device}
}

func TestDecide(t *testing.T) {
	known := &Record{FirstSeen: at(0), LastSeen: at(10), Devices: []string{"dev-a", "dev-b"}}
	tests := []struct {
		name string
		rec  *Record
		s    SignIn
		want Kind
	}{
		{"a person seen for the first time is welcomed", nil, signIn("e", 0, "dev-a"), Welcome},
		{"a first sign-in without a device id is still a welcome", nil, signIn("e", 0, ""), Welcome},
		{"a known person on a known device gets nothing", known, signIn("e", 20, "dev-b"), None},
		{"a known person on an unknown device gets an alert", known, signIn("e", 20, "dev-c"), NewDevice},
		{"a known person without a device id gets an alert", known, signIn("e", 20, ""), NewDevice},
		{"a person with no devices recorded gets an alert", &Record{FirstSeen: at(0)}, signIn("e", 1, "dev-a"), NewDevice},
		{"a sign-in older than the welcomed one gets nothing", known, signIn("e", -5, "dev-z"), None},
		{"a late sign-in after the welcome on an unknown device gets an alert", known, signIn("e", 5, "dev-z"), NewDevice},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Decide(tt.rec, tt.s); got != tt.want {
				t.Errorf("Decide(%+v, %+v) = %q, want %q", tt.rec, tt.s, got, tt.want)
			}
		})
	}
}

func TestRemember(t *testing.T) {
	many := make([]string, MaxDevices)
	for i := range many {
		many[i] = fmt.Sprintf("dev-%02d", i)
	}
	tests := []struct {
		name        string
		rec         *Record
		s           SignIn
		wantDevices []string
		wantFirst   time.Time
		wantLast    time.Time
	}{
		{"a new person starts a record", nil, signIn("e", 0, "dev-a"), []string{"dev-a"}, at(0), at(0)},
		{"a new person without a device has no devices", nil, signIn("e", 0, ""), []string{}, at(0), at(0)},
		{"a known device becomes the most recent", &Record{FirstSeen: at(0), LastSeen: at(1), Devices: []string{"dev-a", "dev-b"}},
			signIn("e", 2, "dev-a"), []string{"dev-b", "dev-a"}, at(0), at(2)},
		{"an older sign-in does not reorder", &Record{FirstSeen: at(0), LastSeen: at(9), Devices: []string{"dev-a", "dev-b"}},
			signIn("e", 5, "dev-a"), []string{"dev-a", "dev-b"}, at(0), at(9)},
		{"an older sign-in's new device is the least recent", &Record{FirstSeen: at(0), LastSeen: at(9), Devices: []string{"dev-a"}},
			signIn("e", 5, "dev-c"), []string{"dev-c", "dev-a"}, at(0), at(9)},
		{"the least recently used device is forgotten", &Record{FirstSeen: at(0), LastSeen: at(1), Devices: many},
			signIn("e", 2, "dev-new"), append(slices.Clone(many[1:]), "dev-new"), at(0), at(2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before Record
			if tt.rec != nil {
				before = tt.rec.clone()
			}
			got := Remember(tt.rec, tt.s)
			if !slices.Equal(got.Devices, tt.wantDevices) || !got.FirstSeen.Equal(tt.wantFirst) || !got.LastSeen.Equal(tt.wantLast) {
				t.Errorf("Remember = first %v last %v devices %v; want %v %v %v",
					got.FirstSeen, got.LastSeen, got.Devices, tt.wantFirst, tt.wantLast, tt.wantDevices)
			}
			if tt.rec != nil && !slices.Equal(tt.rec.Devices, before.Devices) {
				t.Errorf("Remember modified its input: %v, was %v", tt.rec.Devices, before.Devices)
			}
		})
	}
}

func TestClaim(t *testing.T) {
	d := func(seq, num uint64) Delivery { return Delivery{Seq: seq, Num: num} }
	redrive := func(d Delivery) Delivery { d.Redrive = true; return d }
	withEmail := func(e Email) *Record {
		r := Record{FirstSeen: at(0), LastSeen: at(0), Devices: []string{"dev-a"}}.with(e)
		return &r
	}
	email := func(state State, seq, delivery uint64) Email {
		return Email{EventID: "e1", Kind: Welcome, At: at(0), State: state, Seq: seq, Delivery: delivery}
	}
	counted := func(e Email, abandoned, unsure int) Email {
		e.Abandoned, e.Unsure = abandoned, unsure
		return e
	}
	known := &Record{FirstSeen: at(0), LastSeen: at(0), Devices: []string{"dev-a"}}
	tests := []struct {
		name          string
		rec           *Record
		s             SignIn
		d             Delivery
		wantStep      Step
		wantKind      Kind
		wantAbandoned int
	}{
		{"a first sign-in claims a welcome", nil, signIn("e1", 0, "dev-a"), d(1, 1), Send, Welcome, 0},
		{"a known device needs nothing", known, signIn("e2", 5, "dev-a"), d(2, 1), Nothing, None, 0},
		{"a new device claims an alert", known, signIn("e2", 5, "dev-b"), d(2, 1), Send, NewDevice, 0},
		{"a sent email is a duplicate", withEmail(email(Sent, 1, 1)), signIn("e1", 0, "dev-a"), d(1, 2), Duplicate, Welcome, 0},
		{"a copy of a sent email is a duplicate", withEmail(email(Sent, 1, 1)), signIn("e1", 0, "dev-a"), d(9, 1), Duplicate, Welcome, 0},
		{"an email to retry is claimed again with its kind", withEmail(email(Retry, 1, 1)), signIn("e1", 0, "dev-a"), d(1, 2), Send, Welcome, 0},
		{"a failed email of this message is terminated again", withEmail(email(Failed, 1, 1)), signIn("e1", 0, "dev-a"), d(1, 2), Terminate, Welcome, 0},
		{"a redriven failed email is sent again", withEmail(email(Failed, 1, 1)), signIn("e1", 0, "dev-a"), redrive(d(7, 1)), Send, Welcome, 0},
		{"an email whose give-up as poison was not stored is given up again", withEmail(counted(email(Retry, 1, 4), MaxAbandoned, 0)), signIn("e1", 0, "dev-a"), d(1, 5), Poison, Welcome, MaxAbandoned},
		{"an email whose give-up as unconfirmed was not stored is given up again", withEmail(counted(email(Retry, 1, 2), 0, MaxUnsure)), signIn("e1", 0, "dev-a"), d(1, 3), Unconfirmed, Welcome, 0},
		{"an email unsure once is sent once more", withEmail(counted(email(Retry, 1, 1), 0, 1)), signIn("e1", 0, "dev-a"), d(1, 2), Send, Welcome, 0},
		{"a redriven unconfirmed email starts afresh", withEmail(counted(email(Failed, 1, 2), 0, MaxUnsure)), signIn("e1", 0, "dev-a"), redrive(d(7, 1)), Send, Welcome, 0},
		{"another copy of a failed email's event sends nothing", withEmail(email(Failed, 1, 1)), signIn("e1", 0, "dev-a"), d(7, 1), Terminate, Welcome, 0},
		{"the holder's own claim holds", withEmail(email(Sending, 1, 3)), signIn("e1", 0, "dev-a"), d(1, 3), Send, Welcome, 0},
		{"the next delivery waits one AckWait for the holder", withEmail(email(Sending, 1, 3)), signIn("e1", 0, "dev-a"), d(1, 4), Wait, Welcome, 0},
		{"the one after takes over", withEmail(email(Sending, 1, 3)), signIn("e1", 0, "dev-a"), d(1, 5), Send, Welcome, 1},
		{"another message with the same event holds it", withEmail(email(Sending, 1, 3)), signIn("e1", 0, "dev-a"), d(8, 1), Elsewhere, Welcome, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Claim(tt.rec, tt.s, tt.d, Policy{})
			if p.Step != tt.wantStep || p.Kind != tt.wantKind {
				t.Fatalf("Claim = step %d kind %q, want %d %q", p.Step, p.Kind, tt.wantStep, tt.wantKind)
			}
			if p.Step != Send {
				return
			}
			e, ok := p.Record.Email(tt.s.EventID)
			if !ok || e.State != Sending || e.Seq != tt.d.Seq || e.Delivery != tt.d.Num || e.Abandoned != tt.wantAbandoned {
				t.Errorf("the record does not hold the claim of %+v: %+v", tt.d, e)
			}
			if tt.d.Redrive && (e.Tries != 0 || e.Unsure != 0) {
				t.Errorf("a redrive kept the counts of before: %+v", e)
			}
		})
	}
}

func TestAnEmailAbandonedTooOftenIsPoison(t *testing.T) {
	s := signIn("e1", 0, "dev-a")
	p := Claim(nil, s, Delivery{Seq: 1, Num: 1}, Policy{})
	rec := p.Record
	for n := uint64(3); ; n += 2 { // every holder dies; the delivery after next takes over
		p = Claim(&rec, s, Delivery{Seq: 1, Num: n}, Policy{})
		if p.Step == Poison {
			if e, _ := p.Record.Email("e1"); e.Abandoned != MaxAbandoned {
				t.Errorf("poison after %d abandoned deliveries, want %d", e.Abandoned, MaxAbandoned)
			}
			return
		}
		if p.Step != Send || n > 20 {
			t.Fatalf("delivery %d: step %d, want Send until poison", n, p.Step)
		}
		rec = p.Record
	}
}

func TestFinish(t *testing.T) {
	held := Delivery{Seq: 1, Num: 2}
	base := func(e Email) Record {
		return Record{FirstSeen: at(0), LastSeen: at(0)}.with(e)
	}
	sending := Email{EventID: "e1", Kind: Welcome, At: at(0), State: Sending, Seq: 1, Delivery: 2}
	unsureOnce := sending
	unsureOnce.Unsure = 1
	tests := []struct {
		name       string
		rec        Record
		d          Delivery
		res        Result
		wantState  State
		wantTries  int
		wantUnsure int
		wantChange bool
	}{
		{"a failure of the email counts a try", base(sending), held, FailedTry, Retry, 1, 0, true},
		{"an outage counts nothing", base(sending), held, NotTried, Retry, 0, 0, true},
		{"an unknown outcome is sent once more", base(sending), held, Unknown, Retry, 0, 1, true},
		{"a second unknown outcome is counted too", base(unsureOnce), held, Unknown, Retry, 0, 2, true},
		{"given up is failed", base(sending), held, GivenUp, Failed, 0, 0, true},
		{"a delivery that lost the claim changes nothing", base(sending), Delivery{Seq: 1, Num: 1}, FailedTry, Sending, 0, 0, false},
		{"a retry already recorded is not counted twice", base(Email{EventID: "e1", Kind: Welcome, At: at(0), State: Retry, Seq: 1, Delivery: 2, Tries: 1}),
			held, FailedTry, Retry, 1, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := tt.rec.Finish("e1", tt.d, tt.res)
			e, _ := got.Email("e1")
			if changed != tt.wantChange || e.State != tt.wantState || e.Tries != tt.wantTries || e.Unsure != tt.wantUnsure {
				t.Errorf("Finish = changed %v %+v; want changed %v state %s tries %d unsure %d",
					changed, e, tt.wantChange, tt.wantState, tt.wantTries, tt.wantUnsure)
			}
		})
	}
}

// A send the relay accepted is recorded by acknowledging its message: a
// claim whose message is at or below the consumer's ack floor is sent, one
// above it is not yet known to be.
func TestAClaimWhoseMessageIsAcknowledgedIsSent(t *testing.T) {
	alert := Email{EventID: "e2", Kind: NewDevice, At: at(2), State: Sending, Seq: 5, Delivery: 1}
	told := Email{EventID: "e1", Kind: NewDevice, At: at(1), State: Folded, FoldedInto: "e2", IP: "192.0.2.1", UserAgent: "UA"}
	rec := Record{FirstSeen: at(0), LastSeen: at(2), Devices: []string{"a", "b"}}.with(told).with(alert)

	if got := rec.Acked(Acks{Floor: 4}); got != &rec {
		t.Errorf("below the claim's message the record changed: %+v", got.Emails)
	}
	got := rec.Acked(Acks{Floor: 5})
	if e, _ := got.Email("e2"); e.State != Sent {
		t.Errorf("at the floor the alert is %s, want sent", e.State)
	}
	if e, _ := got.Email("e1"); e.State != Folded || e.IP != "" || e.UserAgent != "" {
		t.Errorf("the sign-in the alert told of keeps its details once it is sent: %+v", e)
	}
	if e, _ := rec.Email("e2"); e.State != Sending {
		t.Errorf("Acked changed the record it was given: %+v", e)
	}
	if (*Record)(nil).Acked(Acks{Floor: 9}) != nil {
		t.Error("no record became one")
	}

	copyOf := SignIn{EventID: "e2", At: at(2), DeviceID: "b"}
	for _, tt := range []struct {
		name string
		d    Delivery
		want Step
	}{
		{"a copy, its message not yet acknowledged", Delivery{Seq: 9, Num: 1, Acks: Acks{Floor: 4}}, Elsewhere},
		{"a copy, its message acknowledged", Delivery{Seq: 9, Num: 1, Acks: Acks{Floor: 7}}, Elsewhere},
		{"a redelivery its holder acknowledged meanwhile", Delivery{Seq: 5, Num: 3, Acks: Acks{Floor: 5}}, Duplicate},
		{"a redelivery, the holder gone", Delivery{Seq: 5, Num: 3, Acks: Acks{Floor: 4}}, Send},
	} {
		if p := Claim(&rec, copyOf, tt.d, Policy{}); p.Step != tt.want {
			t.Errorf("%s: step %d, want %d", tt.name, p.Step, tt.want)
		}
	}
	// A copy whose other message left the stream by age finds the email
	// sent; one deleted younger is taken over.
	if p := Gone(&rec, alert, Delivery{Seq: 9, Num: 1, Now: at(2).Add(6 * 24 * time.Hour)}, 5*24*time.Hour); p.Step != Duplicate {
		t.Errorf("a claim past the horizon, its message gone: step %d, want Duplicate", p.Step)
	}
	if p := Gone(&rec, alert, Delivery{Seq: 9, Num: 1, Now: at(3)}, 5*24*time.Hour); p.Step != Send {
		t.Errorf("a young claim, its message gone: step %d, want Send", p.Step)
	}
	// A copy whose other message left the stream takes the email over,
	// whatever the floor says: it also passes a message deleted before it
	// was acknowledged.
	for _, floor := range []uint64{4, 7} {
		if p := TakeOver(&rec, alert, Delivery{Seq: 9, Num: 1, Acks: Acks{Floor: floor}}); p.Step != Send || p.Email.Abandoned != 1 || p.Email.Seq != 9 {
			t.Errorf("taking over at floor %d: step %d, %+v; want Send by 9, one abandoned", floor, p.Step, p.Email)
		}
	}
}

// A consumer made anew (deleted, then created again by the worker) starts
// with an ack floor of 0 and delivers every message in the stream again,
// with delivery counts from 1: the claims the old one delivered are sent,
// not claims of these deliveries.
func TestClaimsOfAConsumerMadeAnewAreSent(t *testing.T) {
	first, again := Acks{Consumer: at(0), Floor: 4}, Acks{Consumer: at(60), Floor: 0}
	s := SignIn{EventID: "e1", At: at(1), DeviceID: "a"}
	p := Claim(nil, s, Delivery{Seq: 5, Num: 1, Acks: first}, Policy{})
	if p.Step != Send || !p.Email.Consumer.Equal(at(0)) {
		t.Fatalf("first claim: %+v", p)
	}
	rec := p.Record
	if p := Claim(&rec, s, Delivery{Seq: 5, Num: 1, Acks: again}, Policy{}); p.Step != Duplicate {
		t.Errorf("the same message from the new consumer: step %d, want Duplicate", p.Step)
	}
	if p := Claim(&rec, s, Delivery{Seq: 5, Num: 1, Acks: first}, Policy{}); p.Step != Send {
		t.Errorf("the claim's own delivery, written again: step %d, want Send", p.Step)
	}
	// Claims written before the consumer was named follow the floor.
	legacy := Record{FirstSeen: at(0), Devices: []string{"a"}}.with(Email{EventID: "e1", Kind: Welcome, At: at(1), State: Sending, Seq: 5, Delivery: 1})
	if p := Claim(&legacy, s, Delivery{Seq: 5, Num: 1, Acks: again}, Policy{}); p.Step != Send {
		t.Errorf("an unnamed claim above the floor: step %d, want Send", p.Step)
	}
	if p := Claim(&legacy, s, Delivery{Seq: 5, Num: 2, Acks: Acks{Consumer: at(0), Floor: 5}}, Policy{}); p.Step != Duplicate {
		t.Errorf("an unnamed claim at the floor: step %d, want Duplicate", p.Step)
	}
}

func TestSettledEmailsArePrunedButPendingOnesNeverAre(t *testing.T) {
	rec := Record{FirstSeen: at(0), LastSeen: at(0)}
	pending := Email{EventID: "pending", Kind: NewDevice, At: at(0), State: Retry}
	rec = rec.with(pending)
	for i := range MaxEmails + 10 {
		rec.LastSeen = at(i)
		rec = rec.with(Email{EventID: fmt.Sprintf("sent-%d", i), Kind: NewDevice, At: at(i), State: Sent})
	}
	if len(rec.Emails) != MaxEmails {
		t.Errorf("%d emails kept, want %d", len(rec.Emails), MaxEmails)
	}
	if _, ok := rec.Email("pending"); !ok {
		t.Error("an email still to be retried was pruned")
	}
	if _, ok := rec.Email("sent-0"); ok {
		t.Error("the oldest settled email was kept beyond MaxEmails")
	}

	// A given-up email, whose dead letter may be redriven for longer.
	rec = rec.with(Email{EventID: "given-up", Kind: NewDevice, At: at(MaxEmails + 10), State: Failed})
	ids := func() []string {
		var ids []string
		for _, e := range rec.Emails {
			ids = append(ids, e.EventID)
		}
		return ids
	}

	// A month and a day later the sent emails are gone.
	rec.LastSeen = at(MaxEmails + 11).Add(KeepSettled)
	rec = rec.with(Email{EventID: "late", Kind: NewDevice, At: rec.LastSeen, State: Sent})
	if got := ids(); !slices.Equal(got, []string{"pending", "given-up", "late"}) {
		t.Errorf("after KeepSettled the record holds %v, want [pending given-up late]", got)
	}
	// Two months and a day later, the given-up one goes too.
	rec.LastSeen = at(MaxEmails + 11).Add(KeepGivenUp)
	rec = rec.with(Email{EventID: "later", Kind: NewDevice, At: rec.LastSeen, State: Sent})
	if got := ids(); !slices.Equal(got, []string{"pending", "late", "later"}) {
		t.Errorf("after KeepGivenUp the record holds %v, want [pending late later]", got)
	}
}

// benchRecord is a person with a few devices and a few emails, as most
// records look after a while.
func benchRecord() Record {
	rec := Remember(nil, signIn("e0", 0, "dev-a"))
	for i := range 3 {
		rec = Remember(&rec, signIn(fmt.Sprintf("e%d", i), i, fmt.Sprintf("dev-%c", 'a'+i)))
		rec = rec.with(Email{EventID: fmt.Sprintf("0190c4b2-000%d-7abc-8def-0123456789ab", i), Kind: NewDevice, At: at(i),
			State: Sent, Seq: uint64(i), Delivery: 1})
	}
	return rec
}

// BenchmarkClaim measures the rules of one email: decide and claim on a
// record.
func BenchmarkClaim(b *testing.B) {
	rec := benchRecord()
	s := SignIn{EventID: "0190c4b2-0009-7abc-8def-0123456789ab", At: at(10), DeviceID: "dev-new"}
	b.ReportAllocs()
	for b.Loop() {
		if p := Claim(&rec, s, Delivery{Seq: 9, Num: 1, Acks: Acks{Floor: 8}}, Policy{}); p.Step != Send {
			b.Fatal("not claimed")
		}
	}
}

// BenchmarkRecordJSON measures encoding and decoding a record, as an email
// does once (its claim), twice when the guess of the record was stale.
func BenchmarkRecordJSON(b *testing.B) {
	rec := benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		data, err := json.Marshal(rec)
		if err != nil {
			b.Fatal(err)
		}
		var back Record
		if err := json.Unmarshal(data, &back); err != nil {
			b.Fatal(err)
		}
	}
}

// One new-device alert per window: later new devices are held, then told
// of in one alert when the window ends (or with the next alert).
func TestNewDeviceAlertsInsideTheWindowAreFolded(t *testing.T) {
	p := Policy{AlertWindow: 10 * time.Minute}
	device := func(id string, minute int, dev string) SignIn {
		s := signIn(id, minute, dev)
		s.IP, s.UserAgent = "192.0.2."+id[1:], "UA "+id
		return s
	}
	now := func(minute int) Delivery { return Delivery{Seq: 1, Num: 1, Now: at(minute)} }
	rec := Record{FirstSeen: at(-60), LastSeen: at(-60), Devices: []string{"home"}}

	// The first new device: an alert at once, and the window starts.
	plan := Claim(&rec, device("e1", 0, "a"), now(0), p)
	if plan.Step != Send || plan.Kind != NewDevice || len(plan.Folded) != 0 || !plan.Record.LastAlert.Equal(at(0)) {
		t.Fatalf("first alert: %+v", plan)
	}
	rec = *plan.Record.Acked(Acks{Floor: 1})

	// Two more inside the window: held until it ends, details kept.
	for i, id := range []string{"e2", "e3"} {
		plan = Claim(&rec, device(id, 2+i, "dev-"+id), now(2+i), p)
		if plan.Step != Hold || !plan.Until.Equal(at(10)) || !plan.Changed {
			t.Fatalf("%s inside the window: %+v", id, plan)
		}
		rec = plan.Record
	}
	if e, _ := rec.Email("e3"); e.State != Held || e.IP != "192.0.2.3" || e.UserAgent != "UA e3" {
		t.Errorf("held sign-in recorded as %+v", e)
	}
	if got := Decide(&rec, signIn("e9", 4, "dev-e2")); got != None {
		t.Errorf("a held device is not remembered: %q", got)
	}
	// e2 comes back before the window ends: still held, nothing to write.
	if plan = Claim(&rec, device("e2", 2, "dev-e2"), now(8), p); plan.Step != Hold || plan.Changed {
		t.Fatalf("e2 before the window ends: %+v", plan)
	}

	// e2 comes back after the window: one alert tells of e2 and e3.
	plan = Claim(&rec, device("e2", 2, "dev-e2"), Delivery{Seq: 1, Num: 2, Now: at(10)}, p)
	if plan.Step != Send || plan.Email.EventID != "e2" || plan.NewlyFolded != 1 || len(plan.Folded) != 1 || plan.Folded[0].EventID != "e3" {
		t.Fatalf("the follow-up: %+v", plan)
	}
	rec = plan.Record
	if e, _ := rec.Email("e3"); e.State != Folded || e.FoldedInto != "e2" {
		t.Errorf("e3 after the follow-up was claimed: %+v", e)
	}
	// e3's own message finds itself told of.
	if plan := Claim(&rec, device("e3", 3, "dev-e3"), Delivery{Seq: 7, Num: 2, Now: at(11)}, p); plan.Step != Told {
		t.Errorf("e3 after the follow-up: step %d, want Told", plan.Step)
	}
	// Sent, the details are forgotten.
	rec = *rec.Acked(Acks{Floor: 1})
	for _, id := range []string{"e2", "e3"} {
		if e, _ := rec.Email(id); e.IP != "" || e.UserAgent != "" {
			t.Errorf("%s keeps its details after the alert was sent: %+v", id, e)
		}
	}
	// With no window every alert goes at once.
	if plan := Claim(&rec, device("e4", 12, "dev-e4"), now(12), Policy{}); plan.Step != Send {
		t.Errorf("without a window: step %d, want Send", plan.Step)
	}
}

// A held sign-in is told of in the next alert even before its window ends
// for it, when another new device comes after the window.
func TestHeldSignInsJoinTheNextAlert(t *testing.T) {
	p := Policy{AlertWindow: 10 * time.Minute}
	rec := Record{FirstSeen: at(-60), LastSeen: at(-60), LastAlert: at(0), Devices: []string{"home"}}
	plan := Claim(&rec, signIn("e2", 5, "b"), Delivery{Seq: 2, Num: 1, Now: at(5)}, p)
	if plan.Step != Hold {
		t.Fatalf("inside the window: %+v", plan)
	}
	rec = plan.Record
	plan = Claim(&rec, signIn("e4", 11, "c"), Delivery{Seq: 4, Num: 1, Now: at(11)}, p)
	if plan.Step != Send || len(plan.Folded) != 1 || plan.Folded[0].EventID != "e2" || !plan.Record.LastAlert.Equal(at(11)) {
		t.Fatalf("the next alert: %+v", plan)
	}
}

// An alert claimed by a worker whose clock runs ahead (here by a day) does
// not hold the next new device's alert until that clock's window ends.
func TestAnAlertWindowFromAClockAheadHoldsNothing(t *testing.T) {
	p := Policy{AlertWindow: 10 * time.Minute}
	rec := Record{FirstSeen: at(-60), LastSeen: at(0), Devices: []string{"home", "a"}, LastAlert: at(24 * 60)}
	plan := Claim(&rec, signIn("e2", 5, "b"), Delivery{Seq: 2, Num: 1, Now: at(5)}, p)
	if plan.Step != Send || plan.Kind != NewDevice {
		t.Errorf("Claim = step %d kind %q (until %v), want the alert sent", plan.Step, plan.Kind, plan.Until)
	}
}

// Sign-ins held in one alert window are told of in the next alert: the
// first MaxHeld with their details, folded into it until it is sent or
// given up (a retried alert still names every one of them), the rest by
// number. However many come, the record stays small.
func TestHeldSignInsAreToldOfInTheNextAlertHoweverManyCome(t *testing.T) {
	p := Policy{AlertWindow: 10 * time.Minute}
	now := func(minute int) Delivery { return Delivery{Seq: 1, Num: 1, Now: at(minute)} }
	rec := Record{FirstSeen: at(-60), LastSeen: at(-60), Devices: []string{"home"}}
	plan := Claim(&rec, signIn("e0", 0, "a"), now(0), p)
	rec = *plan.Record.Acked(Acks{Floor: 1})
	const held = MaxHeld + 1000
	for i := range held {
		plan = Claim(&rec, signIn(fmt.Sprintf("h%d", i), 1, fmt.Sprintf("dev-%d", i)), now(1), p)
		want := Hold
		if i >= MaxHeld {
			want = Counted
		}
		if plan.Step != want || !plan.Changed {
			t.Fatalf("sign-in %d inside the window: step %d (changed %v), want %d", i, plan.Step, plan.Changed, want)
		}
		rec = plan.Record
	}
	if data, err := json.Marshal(rec); err != nil || len(data) > 16<<10 {
		t.Errorf("the record takes %d bytes (%v), want it small", len(data), err)
	}
	if got := Decide(&rec, signIn("e9", 2, "dev-1000")); got != None {
		t.Errorf("a counted device is not remembered: %q", got)
	}

	// The window ends: the next alert tells of every held sign-in.
	first := Delivery{Seq: 2, Num: 1, Now: at(11)}
	plan = Claim(&rec, signIn("e1", 11, "dev-new"), first, p)
	if plan.Step != Send || len(plan.Folded) != MaxHeld || plan.Email.More != held-MaxHeld || plan.NewlyFolded != held {
		t.Fatalf("the alert after the window: step %d, %d folded, %d more, %d newly; want %d, %d, %d",
			plan.Step, len(plan.Folded), plan.Email.More, plan.NewlyFolded, MaxHeld, held-MaxHeld, held)
	}
	rec, _ = plan.Record.Finish("e1", first, FailedTry)
	retry := Delivery{Seq: 2, Num: 2, Now: at(12)}
	if plan = Claim(&rec, signIn("e1", 11, "dev-new"), retry, p); plan.Step != Send || len(plan.Folded) != MaxHeld || plan.Email.More != held-MaxHeld {
		t.Errorf("the retried alert: step %d, %d folded, %d more; want %d and %d", plan.Step, len(plan.Folded), plan.Email.More, MaxHeld, held-MaxHeld)
	}
	// Sent: a new window counts from nothing.
	rec = *plan.Record.Acked(Acks{Floor: retry.Seq})
	if rec.MoreHeld != 0 || rec.held() != 0 {
		t.Errorf("after the alert: %d counted, %d held; want none", rec.MoreHeld, rec.held())
	}
}

// A counted sign-in delivered again (its acknowledgement was lost) counts
// nothing again, also without a device id and after the window.
func TestACountedSignInIsCountedOnce(t *testing.T) {
	p := Policy{AlertWindow: 10 * time.Minute}
	rec := Record{FirstSeen: at(-60), LastSeen: at(-60), Devices: []string{"home"}, LastAlert: at(0)}
	for i := range MaxHeld {
		plan := Claim(&rec, signIn(fmt.Sprintf("h%d", i), 1, fmt.Sprintf("dev-%d", i)), Delivery{Seq: uint64(10 + i), Num: 1, Now: at(1)}, p)
		rec = plan.Record
	}
	bot := signIn("bot", 2, "") // no device id
	plan := Claim(&rec, bot, Delivery{Seq: 99, Num: 1, Now: at(2)}, p)
	if plan.Step != Counted || !plan.Changed || plan.Record.MoreHeld != 1 {
		t.Fatalf("the first delivery: %+v", plan)
	}
	rec = plan.Record
	for _, d := range []Delivery{{Seq: 99, Num: 2, Now: at(3)}, {Seq: 99, Num: 3, Now: at(30)}} {
		if plan := Claim(&rec, bot, d, p); plan.Step != Counted || plan.Changed || plan.Decided {
			t.Errorf("delivered again at %v: step %d, changed %v; want Counted and nothing to store", d.Now, plan.Step, plan.Changed)
		}
	}
}

// An alert retried for days (a full mailbox) keeps the sign-ins folded
// into it; those count against MaxHeld, so that window after window of
// new devices meanwhile are counted, not kept: the record stays small.
func TestARetriedAlertAndWindowAfterWindowKeepTheRecordSmall(t *testing.T) {
	p := Policy{AlertWindow: 10 * time.Minute}
	rec := Record{FirstSeen: at(-60), LastSeen: at(-60), Devices: []string{"home"}}
	seq := uint64(1)
	next := func() uint64 { seq++; return seq }
	for w := range 100 {
		start := w * 11
		alert := Claim(&rec, signIn(fmt.Sprintf("a%d", w), start, fmt.Sprintf("alert-%d", w)), Delivery{Seq: next(), Num: 1, Now: at(start)}, p)
		if alert.Step != Send {
			t.Fatalf("window %d: the alert's step %d", w, alert.Step)
		}
		rec, _ = alert.Record.Finish(alert.Email.EventID, Delivery{Seq: seq, Num: 1}, FailedTry) // the mailbox is full
		for i := range MaxHeld + 5 {
			plan := Claim(&rec, signIn(fmt.Sprintf("w%d-%d", w, i), start+1, fmt.Sprintf("dev-%d-%d", w, i)), Delivery{Seq: next(), Num: 1, Now: at(start + 1)}, p)
			rec = plan.Record
		}
	}
	if data, err := json.Marshal(rec); err != nil || len(data) > 256<<10 {
		t.Errorf("after 100 windows the record takes %d bytes (%v), want it well under NATS's 1 MB", len(data), err)
	}
	if n := rec.held(); n > MaxHeld {
		t.Errorf("%d sign-ins kept with their details, want at most %d", n, MaxHeld)
	}
}
