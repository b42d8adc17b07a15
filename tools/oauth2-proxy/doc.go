// Package oauth2proxy pins oauth2-proxy (`go tool oauth2-proxy`), built by
// the Makefile into bin/oauth2-proxy. make bench signs in through it next to
// auth-gateway, against the same provider with the same browsers, so that the
// gateway's cost per sign-in has a well-known neighbour to be compared with.
// It is its own module, out of go.work, so that oauth2-proxy's dependency
// graph never moves the services'.
package oauth2proxy
