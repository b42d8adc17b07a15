// Package mailpit pins Mailpit (`go tool mailpit`), built by the Makefile
// into bin/mailpit. The end-to-end tests deliver email through it, a real
// SMTP server this repository did not write, and make it fail on purpose
// with its chaos triggers. It is its own module, out of go.work, so that
// Mailpit's dependency graph never moves the services'.
package mailpit
