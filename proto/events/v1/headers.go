package eventsv1

import "time"

// HeaderMsgID is JetStream's de-duplication header (nats.go's
// jetstream.MsgIDHeader); a published event carries its event_id in it.
const HeaderMsgID = "Nats-Msg-Id"

// SetHeaders sets, through set (such as nats.Header.Set), the headers the
// contract puts on a published UserAuthenticated: the event id as
// JetStream's message id, and the CloudEvents attributes with source
// naming the publisher.
func (e *UserAuthenticated) SetHeaders(set func(key, value string), source string) {
	id := e.GetEventId()
	set(HeaderMsgID, id)
	set(HeaderContentType, ContentTypeProtobuf)
	set(HeaderSpecVersion, SpecVersion)
	set(HeaderID, id)
	set(HeaderSource, source)
	set(HeaderType, TypeUserAuthenticated)
	set(HeaderTime, e.GetAuthenticatedAt().AsTime().UTC().Format(time.RFC3339Nano))
}
