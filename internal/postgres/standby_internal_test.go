package postgres

import "testing"

// nextInsert turns a replayed record's end into the insert position that
// follows it, which is what pg_current_wal_insert_lsn() says once that
// record is the last: aligned to 8 bytes, past a page header at a page's
// start (a long one at a segment's).
func TestNextInsert(t *testing.T) {
	const seg = 16 << 20
	for _, tc := range []struct{ end, want uint64 }{
		{0x30118B8, 0x30118B8},          // aligned, mid-page
		{0x30118B1, 0x30118B8},          // aligned up
		{0x3012000 - 3, 0x3012000 + 24}, // a page's end: the next starts with its header
		{0x3000000, 0x3000000 + 40},     // a segment's start: the long header
		{0x3012000, 0x3012000 + 24},
	} {
		if got := nextInsert(tc.end, seg); got != tc.want {
			t.Errorf("nextInsert(%#x) = %#x, want %#x", tc.end, got, tc.want)
		}
	}
	for text, want := range map[string]uint64{"0/30118B8": 0x30118B8, "16/B374D848": 0x16B374D848, "FFFFFFFF/FFFFFFFF": 1<<64 - 1} {
		if got, err := ParseLSN(text); err != nil || got != want {
			t.Errorf("ParseLSN(%q) = %#x, %v; want %#x", text, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "0/", "/1", "x/1", "1/100000000"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) accepted", bad)
		}
	}
}
