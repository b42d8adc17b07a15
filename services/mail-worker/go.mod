module github.com/doorbell/doorbell/services/mail-worker

go 1.26

require github.com/doorbell/doorbell/proto v0.0.0

replace github.com/doorbell/doorbell/proto => ../../proto
