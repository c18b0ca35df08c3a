package httpapi

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/segments-service/segments/internal/domain"
)

// appendUserSegments appends the JSON of UserSegments{userID, ms}, byte for
// byte what respond writes for it (encoding/json, a newline after), without
// reflection: it is the body of every read of a user's segments, and
// encoding/json took 8 % of the service's CPU on reads that miss the cache.
// TestUserSegmentsEncodingMatchesEncodingJSON holds it to that.
func appendUserSegments(b []byte, userID int64, ms []domain.Membership) []byte {
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
		if m.ExpiresAt == nil {
			b = append(b, "null"...)
		} else {
			b = appendJSONTime(b, *m.ExpiresAt)
		}
		b = append(b, `,"source":`...)
		b = appendJSONString(b, string(m.Source))
		b = append(b, '}')
	}
	return append(b, "]}\n"...)
}

// appendJSONTime appends t in UTC as encoding/json writes a time.Time.
func appendJSONTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
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
