module github.com/doorbell/doorbell/e2e

go 1.26

require (
	github.com/doorbell/doorbell/devstack v0.0.0
	github.com/doorbell/doorbell/proto v0.0.0
)

replace (
	github.com/doorbell/doorbell/devstack => ../devstack
	github.com/doorbell/doorbell/proto => ../proto
)
