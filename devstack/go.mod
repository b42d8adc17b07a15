module github.com/doorbell/doorbell/devstack

go 1.26
