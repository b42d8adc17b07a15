package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// A real browser signs in: headless Chromium clicks the gateway's sign-in
// link, types into the dev IdP's form and comes back signed in; the email
// arrives. Screenshots of each page land in the test's temp dir (or in
// $DOORBELL_SCREENSHOTS when set) for a person to look at.
func TestBrowserSignIn(t *testing.T) {
	chromium := requireTool(t, "chromium", "chromium")
	s := startStack(t)
	const email = "katherine@example.test"

	shots := os.Getenv("DOORBELL_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	ctx := startChromium(t, chromium, 90*time.Second)
	shot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			return saveScreenshot(ctx, filepath.Join(shots, name+".png"))
		})
	}

	signInButton := chromedp.CSS(`a[href^="/login"], form[action^="/login"] button`)
	err := chromedp.Do(ctx,
		chromedp.Navigate(s.publicURL+"/"),
		chromedp.WaitVisible(signInButton),
		shot("1-start"),
		chromedp.Click(signInButton),
		chromedp.WaitVisible(chromedp.CSS(`input[name="email"]`)),
		shot("2-provider"),
		chromedp.SendKeys(chromedp.CSS(`input[name="email"]`), email),
		chromedp.SendKeys(chromedp.CSS(`input[name="name"]`), "Katherine <Johnson>"),
		shot("3-filled"),
		chromedp.Submit(chromedp.CSS(`input[name="email"]`)),
		chromedp.WaitVisible(chromedp.Search(`//*[contains(., "Signed in as")]`)),
		shot("4-signed-in"),
	)
	if err != nil {
		t.Fatalf("browser sign-in: %v (screenshots in %s)", err, shots)
	}
	signedIn, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`body`)))
	if err != nil {
		t.Fatalf("read the signed-in page: %v", err)
	}
	if !strings.Contains(signedIn, email) || !strings.Contains(signedIn, "Katherine <Johnson>") {
		t.Errorf("signed-in page does not show the user as text (escaped, not markup):\n%s", signedIn)
	}
	eventually(t, 60*time.Second, "the welcome email", func() bool { return len(s.mailTo(email)) > 0 })
	s.waitConsumerIdle(context.Background())
	if n := len(s.mailTo(email)); n != 1 {
		t.Errorf("inbox holds %d emails for %s, want 1", n, email)
	}
}

// startChromium starts headless Chromium (the binary at execPath) with a
// fresh profile and a 1000×800 window, and returns a tab's context that
// ends after within or with the test.
func startChromium(t *testing.T, execPath string, within time.Duration) context.Context {
	t.Helper()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(execPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.WindowSize(1000, 800),
	)
	ctx, cancel := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, within)
	t.Cleanup(func() {
		cancelTimeout()
		cancel()
		cancelAlloc()
	})
	return ctx
}

// saveScreenshot saves a PNG of the whole page in file.
func saveScreenshot(ctx context.Context, file string) error {
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return err
	}
	return os.WriteFile(file, png, 0o644)
}
