// Package secret reads the secrets a Doorbell service is configured with:
// from the environment, or from a file whose path the environment names
// (NAME_FILE), as container orchestrators mount them.
//
// Both services read secrets by these rules, so that they cannot drift: a
// file wins over the plain variable; white space around a value is not
// part of it; and a file that holds nothing else is an error, never "no
// secret" (or a default), because it is what a mount that did not happen
// leaves behind. Errors name files, never a secret's value.
package secret

import (
	"errors"
	"os"
	"strings"
)

// ErrEmpty says that a secret file holds nothing but white space.
var ErrEmpty = errors.New("the file is empty")

// ReadFile returns the secret in the file at path, without the white space
// around it (such as the newline an editor adds). It returns ErrEmpty for a
// file that holds nothing else, and os.ReadFile's error for one it cannot
// read.
func ReadFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", ErrEmpty
	}
	return v, nil
}

// Lookup returns the secret called name through getenv (os.Getenv in
// production): the content of the file NAME_FILE names when NAME_FILE is
// set (it wins), else the value of NAME, either without the white space
// around it. file is the path it read, "" when it read none, for the
// caller's error message, which should name NAME_FILE: err is ReadFile's
// and does not. value is "" when neither is set or on an error.
func Lookup(getenv func(string) string, name string) (value, file string, err error) {
	if file = strings.TrimSpace(getenv(name + "_FILE")); file != "" {
		value, err = ReadFile(file)
		return value, file, err
	}
	return strings.TrimSpace(getenv(name)), "", nil
}
