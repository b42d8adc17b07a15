module github.com/doorbell/doorbell/services/auth-gateway

go 1.26

require github.com/doorbell/doorbell/proto v0.0.0

replace github.com/doorbell/doorbell/proto => ../../proto
