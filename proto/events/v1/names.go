package eventsv1

// Names of the NATS subjects and JetStream objects that Doorbell's services
// share. They are part of the contract in docs/design.md: operators write them into
// stream configs, ACLs and dashboards, so change them only on purpose.
const (
	// SubjectUserAuthenticated carries one UserAuthenticated per sign-in.
	SubjectUserAuthenticated = "user.authenticated"
	// StreamAuthEvents holds the user.> subjects; the auth-gateway owns it.
	StreamAuthEvents = "AUTH_EVENTS"
	// StreamAuthEventsSubjects is the subject filter of StreamAuthEvents.
	StreamAuthEventsSubjects = "user.>"
	// ConsumerMailWorker is the durable pull consumer every mail-worker
	// replica shares.
	ConsumerMailWorker = "mail-worker"
	// StreamDeadLetter holds events the mail-worker gave up on.
	StreamDeadLetter = "MAIL_DEADLETTER"
	// SubjectDeadLetter is the only subject of StreamDeadLetter.
	SubjectDeadLetter = "mail.deadletter"
)

// Header names and values on a published UserAuthenticated message. The
// CloudEvents headers follow the NATS protocol binding in binary mode.
const (
	HeaderContentType   = "Content-Type"
	ContentTypeProtobuf = "application/protobuf"
	HeaderSpecVersion   = "ce-specversion"
	HeaderID            = "ce-id"
	HeaderSource        = "ce-source"
	HeaderType          = "ce-type"
	HeaderTime          = "ce-time"
	SpecVersion         = "1.0"
	// TypeUserAuthenticated is the CloudEvents type, the proto's full name.
	TypeUserAuthenticated = "doorbell.events.v1.UserAuthenticated"
)
