package httpapi

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/segments-service/segments/internal/readcache"
)

// appendUserSegments appends the JSON of UserSegments{userID, ms}, byte for
// byte what respond writes for it (encoding/json, a newline after), without
// reflection: it is the body of every read of a user's segments, and
// encoding/json took 8 % of the service's CPU on reads that miss the cache.
// TestUserSegmentsEncodingMatchesEncodingJSON holds it to that.
func appendUserSegments(b []byte, userID int64, ms []readcache.Membership) []byte {
	b = append(b, `{"user_id":`...)
	b = strconv.AppendInt(b, userID, 10)
	b = append(b, `,"segments":[`...)
	for i, m := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"slug":`...)
		b = appendJSONString(b, m.Slug)
		b = append(b, `,"added_at":`...)
		b = appendJSONTime(b, m.AddedAt)
		b = append(b, `,"expires_at":`...)
		if m.ExpiresAt == 0 {
			b = append(b, "null"...)
		} else {
			b = appendJSONTime(b, m.ExpiresAt)
		}
		if m.Auto {
			b = append(b, `,"source":"auto"}`...)
		} else {
			b = append(b, `,"source":"manual"}`...)
		}
	}
	return append(b, "]}\n"...)
}

// appendJSONTime appends the instant of Unix microseconds us, in UTC, as
// encoding/json writes a time.Time: RFC 3339 with the fraction's trailing
// zeros cut. It writes the digits itself (time's general formatter took
// most of a cache hit's own time); years outside 1970–9999 go through
// time's formatter.
func appendJSONTime(b []byte, us int64) []byte {
	const maxMicros = 253402300799999999 // 9999-12-31T23:59:59.999999Z
	if us < 0 || us > maxMicros {
		b = append(b, '"')
		b = time.UnixMicro(us).UTC().AppendFormat(b, time.RFC3339Nano)
		return append(b, '"')
	}
	secs, frac := us/1e6, us%1e6
	year, month, day := time.Unix(secs, 0).UTC().Date()
	sod := secs % 86400
	b = append(b, '"')
	b = append4(b, year)
	b = append(b, '-')
	b = append2(b, int(month))
	b = append(b, '-')
	b = append2(b, day)
	b = append(b, 'T')
	b = append2(b, int(sod/3600))
	b = append(b, ':')
	b = append2(b, int(sod/60%60))
	b = append(b, ':')
	b = append2(b, int(sod%60))
	if frac != 0 {
		var digits [6]byte
		for i := 5; i >= 0; i-- {
			digits[i] = byte('0' + frac%10)
			frac /= 10
		}
		n := 6
		for digits[n-1] == '0' {
			n--
		}
		b = append(b, '.')
		b = append(b, digits[:n]...)
	}
	return append(b, 'Z', '"')
}

func append2(b []byte, n int) []byte { return append(b, byte('0'+n/10), byte('0'+n%10)) }

func append4(b []byte, n int) []byte {
	return append(b, byte('0'+n/1000), byte('0'+n/100%10), byte('0'+n/10%10), byte('0'+n%10))
}

// appendJSONString appends s quoted as encoding/json quotes it (HTML-safe,
// invalid UTF-8 replaced).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
