// Package tools pins the code generators and linters the Makefile runs
// (`go tool buf`, `go tool protoc-gen-go`, `go tool staticcheck`). It is kept
// out of go.work so that their large dependency graphs never change the
// versions the services build with.
package tools
