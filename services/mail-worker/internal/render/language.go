package render

import (
	"fmt"
	"strings"
	"time"

	ua "github.com/mileusna/useragent"
	"golang.org/x/text/feature/plural"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
	"golang.org/x/text/message/catalog"
)

// Embedded are the languages the embedded templates are written in.
var Embedded = []language.Tag{language.English, language.Korean}

// choose returns the language of an email among supported (which matcher
// matches): the provider's locale claim if it matches one, else the first
// match in the browser's Accept-Language, else fallback.
func choose(matcher language.Matcher, supported []language.Tag, locale, acceptLanguage string, fallback language.Tag) language.Tag {
	var prefs []language.Tag
	// Providers send BCP 47 tags, and some the POSIX form (ko_KR).
	if t, err := language.Parse(strings.ReplaceAll(locale, "_", "-")); err == nil {
		prefs = append(prefs, t)
	}
	if tags, _, err := language.ParseAcceptLanguage(acceptLanguage); err == nil {
		prefs = append(prefs, tags...)
	}
	for _, p := range prefs {
		if _, i, conf := matcher.Match(p); conf != language.No {
			return supported[i]
		}
	}
	return fallback
}

// phrases holds what the code (not the templates) says, by language: the
// browser in words and counts with their plural forms. A language without
// an entry falls back to English.
var phrases = func() catalog.Catalog {
	b := catalog.NewBuilder(catalog.Fallback(language.English))
	set := func(tag language.Tag, key string, msg ...catalog.Message) {
		if err := b.Set(tag, key, msg...); err != nil {
			panic(err) // a static catalog: cannot fail at run time
		}
	}
	set(language.English, "%[1]s on %[2]s", catalog.String("%[1]s on %[2]s"))
	set(language.Korean, "%[1]s on %[2]s", catalog.String("%[2]s의 %[1]s"))
	set(language.English, "an unknown browser", catalog.String("an unknown browser"))
	set(language.Korean, "an unknown browser", catalog.String("알 수 없는 브라우저"))
	set(language.English, "unknown", catalog.String("unknown"))
	set(language.Korean, "unknown", catalog.String("알 수 없음"))
	set(language.English, "%d new devices",
		plural.Selectf(1, "%d", "=1", "a new device", "other", "%d new devices"))
	set(language.Korean, "%d new devices", catalog.String("새 기기 %d대"))
	set(language.English, "%d sign-ins",
		plural.Selectf(1, "%d", "=1", "one sign-in", "other", "%d sign-ins"))
	set(language.Korean, "%d sign-ins", catalog.String("로그인 %d건"))
	set(language.English, "and %d more, too many to list",
		plural.Selectf(1, "%d", "=1", "and one more, too many to list", "other", "and %d more, too many to list"))
	set(language.Korean, "and %d more, too many to list", catalog.String("외 %d건 (너무 많아 모두 적지 못했습니다)"))
	return b
}()

// printer formats phrases in lang.
func printer(lang language.Tag) *message.Printer {
	return message.NewPrinter(lang, message.Catalog(phrases))
}

// browser names a User-Agent in words ("Firefox on Windows"), or says it
// is unknown.
func browser(p *message.Printer, userAgent string) string {
	u := ua.Parse(userAgent)
	switch {
	case u.Name != "" && u.OS != "":
		return p.Sprintf("%[1]s on %[2]s", u.Name, u.OS)
	case u.Name != "":
		return u.Name
	}
	return p.Sprintf("an unknown browser")
}

// koreanWeekdays are the one-syllable day names Korean dates use.
var koreanWeekdays = [...]string{"일", "월", "화", "수", "목", "금", "토"}

// when formats t in loc for lang, with the zone named: "Monday, 7 December
// 2026, 14:05 KST (Asia/Seoul)", "2026년 12월 7일 (월) 14:05 KST (Asia/Seoul)".
func when(lang language.Tag, t time.Time, loc *time.Location) string {
	t = t.In(loc)
	zone := t.Format("MST")
	if name := loc.String(); name != zone && name != "UTC" && name != "Local" {
		zone += " (" + name + ")"
	}
	if base, _ := lang.Base(); base.String() == "ko" {
		return fmt.Sprintf("%d년 %d월 %d일 (%s) %s %s", t.Year(), t.Month(), t.Day(), koreanWeekdays[t.Weekday()], t.Format("15:04"), zone)
	}
	return t.Format("Monday, 2 January 2006, 15:04 ") + zone
}
