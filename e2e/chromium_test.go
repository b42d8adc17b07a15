package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// headless is a headless Chromium for one test: ctx drives it (bounded by
// within), shot saves a screenshot of the current page under name in the
// test's screenshot folder (the test's temp dir, or $DOORBELL_SCREENSHOTS
// when set), and shots is that folder, for failure messages.
type headless struct {
	ctx   context.Context
	shots string
}

func startChromium(t *testing.T, within time.Duration) *headless {
	t.Helper()
	chromium := requireTool(t, "chromium", "chromium")
	shots := os.Getenv("DOORBELL_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium),
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
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(cancel)
	ctx, cancelTimeout := context.WithTimeout(ctx, within)
	t.Cleanup(cancelTimeout)
	return &headless{ctx: ctx, shots: shots}
}

func (h *headless) shot(name string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		return saveScreenshot(ctx, filepath.Join(h.shots, name+".png"))
	})
}

// saveScreenshot saves a PNG of the whole page in file.
func saveScreenshot(ctx context.Context, file string) error {
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		return err
	}
	return os.WriteFile(file, png, 0o644)
}

// signInButton is the gateway's sign-in link (or button).
var signInButton = chromedp.CSS(`a[href^="/login"], form[action^="/login"] button`)

// A real browser signs in: headless Chromium clicks the gateway's sign-in
// link, types into the dev IdP's form and comes back signed in; the email
// arrives. Screenshots of each page land in the test's temp dir (or in
// $DOORBELL_SCREENSHOTS when set) for a person to look at.
func TestBrowserSignIn(t *testing.T) {
	b := startChromium(t, 90*time.Second)
	s := startStack(t)
	const email = "katherine@example.test"

	err := chromedp.Do(b.ctx,
		chromedp.Navigate(s.publicURL+"/"),
		chromedp.WaitVisible(signInButton),
		b.shot("1-start"),
		chromedp.Click(signInButton),
		chromedp.WaitVisible(chromedp.CSS(`input[name="email"]`)),
		b.shot("2-provider"),
		chromedp.SendKeys(chromedp.CSS(`input[name="email"]`), email),
		chromedp.SendKeys(chromedp.CSS(`input[name="name"]`), "Katherine <Johnson>"),
		b.shot("3-filled"),
		chromedp.Submit(chromedp.CSS(`input[name="email"]`)),
		chromedp.WaitVisible(chromedp.Search(`//*[contains(., "Signed in as")]`)),
		b.shot("4-signed-in"),
	)
	if err != nil {
		t.Fatalf("browser sign-in: %v (screenshots in %s)", err, b.shots)
	}
	signedIn, err := chromedp.Run(b.ctx, chromedp.Text(chromedp.CSS(`body`)))
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

// Signing out at the provider, in a real browser: after the gateway's
// "Sign out" button, Hydra's own session is gone too, so the next person
// at this browser has to sign in at Hydra again instead of being let in as
// the previous one. (Chromium applies the page's CSP form-action to the
// redirects that follow a form post, and Hydra ends a session only for an
// RP that proves which sign-in it ends, with id_token_hint.)
func TestBrowserSignsOutAtTheProvider(t *testing.T) {
	b := startChromium(t, 120*time.Second)
	idp := startHydra(t)
	const clientID, secret = "doorbell-hydra-logout", "doorbell-hydra-logout-secret"
	s := startStack(t, "OIDC_ISSUER="+idp.issuer, "OIDC_CLIENT_ID="+clientID, "OIDC_CLIENT_SECRET="+secret)
	idp.registerClient(clientID, secret, s.publicURL, "client_secret_basic")
	const email = "grace@example.test"
	signedIn := chromedp.Search(`//p[contains(@class, "who")]`)
	hydraForm := chromedp.CSS(`input[name="email"]`)
	// landed is where a sign-in ends up: Hydra's form, or signed in.
	landed := func() (form bool, err error) {
		if err := chromedp.Do(b.ctx, chromedp.WaitVisible(chromedp.CSS(`input[name="email"], p.who`))); err != nil {
			return false, err
		}
		return chromedp.Run(b.ctx, chromedp.Evaluate[bool](`document.querySelector('input[name="email"]') !== null`))
	}
	// forgetGatewaySession drops the gateway's session cookie, so the next
	// sign-in starts at Hydra.
	forgetGatewaySession := chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, network.DeleteCookies, network.DeleteCookiesParams{Name: "doorbell_session", URL: s.publicURL + "/"})
		return err
	})

	err := chromedp.Do(b.ctx,
		chromedp.Navigate(s.publicURL+"/"),
		chromedp.Click(signInButton),
		chromedp.WaitVisible(hydraForm),
		chromedp.SendKeys(hydraForm, email),
		chromedp.Submit(hydraForm),
		chromedp.WaitVisible(signedIn),
		b.shot("1-signed-in"),
		// Without signing out at Hydra, a new sign-in goes straight
		// through: Hydra remembers the person.
		forgetGatewaySession,
		chromedp.Navigate(s.publicURL+"/"),
		chromedp.Click(signInButton),
	)
	if err != nil {
		t.Fatalf("sign in through Hydra: %v (screenshots in %s)", err, b.shots)
	}
	if form, err := landed(); err != nil || form {
		t.Fatalf("a second sign-in showed Hydra's form (%v, %v); Hydra should remember the person, or this test proves nothing", form, err)
	}

	// Through Hydra's logout and back to the gateway's start page; the
	// shorter bound leaves time to say where the browser got stuck.
	step, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	err = chromedp.Do(step,
		b.shot("2-signed-in-again"),
		chromedp.Click(chromedp.CSS(`form[action="/logout"] button`)),
		chromedp.WaitVisible(signInButton),
		b.shot("3-signed-out"),
	)
	if err != nil {
		at, _ := chromedp.Run(b.ctx, chromedp.Location())
		_ = chromedp.Do(b.ctx, b.shot("3-stuck"))
		t.Fatalf("sign out did not come back to the gateway signed out: %v (at %q; screenshots in %s)", err, at, b.shots)
	}
	if err := chromedp.Do(b.ctx, chromedp.Click(signInButton)); err != nil {
		t.Fatal(err)
	}
	form, err := landed()
	if err != nil {
		t.Fatalf("sign-in after signing out: %v", err)
	}
	_ = chromedp.Do(b.ctx, b.shot("4-after-sign-out"))
	if !form {
		t.Error("after signing out, the next sign-in went straight through: the session at Hydra survived the sign-out")
	}
}
