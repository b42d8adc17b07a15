// Package hydra pins Ory Hydra (`go tool hydra`), built by the Makefile into
// bin/hydra with SQLite for its in-memory store. The end-to-end tests sign in
// through it as a real OpenID Connect provider. It is its own module, out of
// go.work, so that Hydra's dependency graph never moves the services'.
package hydra
