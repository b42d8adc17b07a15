package redirect_test

import (
	"testing"

	"github.com/doorbell/doorbell/services/auth-gateway/internal/redirect"
)

// BenchmarkCheck measures the rd validator on an accepted path, an
// accepted allowlisted URL and a refused trick.
func BenchmarkCheck(b *testing.B) {
	a, err := redirect.New([]string{"app.example.com", "wiki.example.com:8443"}, true)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct{ name, target string }{
		{"path", "/settings?tab=2"},
		{"allowlisted-url", "https://app.example.com/reports?q=1"},
		{"refused-trick", "/%5C%5Cevil.example"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a.Check(c.target)
			}
		})
	}
}
