package secret_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/doorbell/doorbell/platform/secret"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLookup(t *testing.T) {
	withNewline := writeFile(t, "from-file\r\n")
	empty := writeFile(t, "")
	blank := writeFile(t, " \n\n")
	tests := []struct {
		name      string
		env       map[string]string
		wantValue string
		wantFile  string
		wantErr   error
	}{
		{"neither set is no secret", nil, "", "", nil},
		{"the variable", map[string]string{"PW": "from-env"}, "from-env", "", nil},
		{"white space around the variable is not part of it", map[string]string{"PW": " from-env\n"}, "from-env", "", nil},
		{"the file wins and loses its newline", map[string]string{"PW": "from-env", "PW_FILE": withNewline}, "from-file", withNewline, nil},
		{"an empty file is an error, not the variable", map[string]string{"PW": "from-env", "PW_FILE": empty}, "", empty, secret.ErrEmpty},
		{"a file of white space is empty", map[string]string{"PW_FILE": blank}, "", blank, secret.ErrEmpty},
		{"a missing file is an error", map[string]string{"PW_FILE": "/nonexistent/pw"}, "", "/nonexistent/pw", fs.ErrNotExist},
		{"a blank PW_FILE is unset", map[string]string{"PW": "from-env", "PW_FILE": " "}, "from-env", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, file, err := secret.Lookup(func(k string) string { return tt.env[k] }, "PW")
			if v != tt.wantValue || file != tt.wantFile || !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Errorf("Lookup = %q, %q, %v; want %q, %q, %v", v, file, err, tt.wantValue, tt.wantFile, tt.wantErr)
			}
		})
	}
}
