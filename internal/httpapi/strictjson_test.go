package httpapi_test

import (
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/segments-service/segments/internal/httpapi"
)

const malformedRequestType = "urn:segments:problem:malformed-request"

// dbState is everything a request body could change, as text: the
// segments' rows, the users, the memberships and the history's length.
func (a *testAPI) dbState() []string {
	a.t.Helper()
	return a.column(`SELECT concat_ws(E'\n',
		(SELECT string_agg(to_jsonb(s)::text, E'\n' ORDER BY s.slug) FROM segments s),
		(SELECT 'users ' || string_agg(id::text, ',' ORDER BY id) FROM users),
		(SELECT 'memberships ' || string_agg(to_jsonb(m)::text, E'\n' ORDER BY to_jsonb(m)::text) FROM memberships m),
		(SELECT 'history ' || count(*) FROM membership_history))`)
}

// Every JSON body is read strictly (design.md, Hardening): invalid UTF-8
// anywhere, a member name given twice, or a name in another case than the
// contract's is a 400 malformed-request problem, and nothing changes.
func TestJSONBodiesAreReadStrictly(t *testing.T) {
	a := newAPI(t)
	a.createSegment("A")
	a.createSegment("B")
	a.mustDo(http.StatusOK, "POST", "/api/v1/users/1/segments", map[string]any{"add": []string{"A"}}, nil)
	start := a.dbState()

	const (
		utf8Problem = "UTF-8"
		twice       = "twice"
		notAField   = "not a field"
	)
	tests := []struct {
		name, method, path, body string
		contentType              string // default application/json
		detail                   string // a part of the detail
	}{
		// POST /segments
		{"create: Latin-1 byte in a value", "POST", "/api/v1/segments", "{\"slug\":\"C_1\",\"description\":\"caf\xe9\"}", "", utf8Problem},
		{"create: cut sequence in a value", "POST", "/api/v1/segments", "{\"slug\":\"C_1\",\"description\":\"caf\xc3\"}", "", utf8Problem},
		{"create: encoded surrogate in a value", "POST", "/api/v1/segments", "{\"slug\":\"C_1\",\"description\":\"\xed\xa0\x80\"}", "", utf8Problem},
		{"create: overlong encoding in a value", "POST", "/api/v1/segments", "{\"slug\":\"C_1\",\"description\":\"\xc0\xaf\"}", "", utf8Problem},
		{"create: escaped lone surrogate", "POST", "/api/v1/segments", `{"slug":"C_1","description":"\ud800"}`, "", "surrogate"},
		{"create: invalid UTF-8 in a name", "POST", "/api/v1/segments", "{\"slug\":\"C_1\",\"descr\xe9ption\":\"x\"}", "", utf8Problem},
		{"create: invalid UTF-8 in the slug's name", "POST", "/api/v1/segments", "{\"sl\xffug\":\"C_1\"}", "", utf8Problem},
		{"create: slug twice", "POST", "/api/v1/segments", `{"slug":"C_1","slug":"C_2"}`, "", twice},
		{"create: slug twice, same value", "POST", "/api/v1/segments", `{"slug":"C_1","slug":"C_1"}`, "", twice},
		{"create: slug twice, once escaped", "POST", "/api/v1/segments", `{"slug":"C_1","sl\u0075g":"C_2"}`, "", twice},
		{"create: description twice", "POST", "/api/v1/segments", `{"slug":"C_1","description":"a","description":"b"}`, "", twice},
		{"create: SLUG after slug", "POST", "/api/v1/segments", `{"slug":"A_1","SLUG":"C_1"}`, "", notAField},
		{"create: Slug", "POST", "/api/v1/segments", `{"Slug":"C_1"}`, "", notAField},
		{"create: SLUG", "POST", "/api/v1/segments", `{"SLUG":"C_1"}`, "", notAField},
		{"create: slug with a long s", "POST", "/api/v1/segments", `{"ſlug":"C_1"}`, "", notAField},
		{"create: Description", "POST", "/api/v1/segments", `{"slug":"C_1","Description":"x"}`, "", notAField},

		// PATCH /segments/{slug}
		{"patch: invalid UTF-8 in a value", "PATCH", "/api/v1/segments/A", "{\"description\":\"caf\xe9\"}", "", utf8Problem},
		{"patch: invalid UTF-8 in a value, merge patch", "PATCH", "/api/v1/segments/A", "{\"description\":\"caf\xe9\"}", "application/merge-patch+json", utf8Problem},
		{"patch: escaped lone surrogate", "PATCH", "/api/v1/segments/A", `{"description":"\udc00"}`, "", "surrogate"},
		{"patch: invalid UTF-8 in a name", "PATCH", "/api/v1/segments/A", "{\"descr\xe9ption\":\"x\"}", "", utf8Problem},
		{"patch: description twice", "PATCH", "/api/v1/segments/A", `{"description":"x","description":"y"}`, "", twice},
		{"patch: description twice, merge patch", "PATCH", "/api/v1/segments/A", `{"description":"x","description":null}`, "application/merge-patch+json", twice},
		{"patch: DESCRIPTION", "PATCH", "/api/v1/segments/A", `{"DESCRIPTION":"x"}`, "", notAField},
		{"patch: Description null", "PATCH", "/api/v1/segments/A", `{"Description":null}`, "application/merge-patch+json", notAField},
		{"patch: Delete_At", "PATCH", "/api/v1/segments/A", `{"Delete_At":"2099-01-01T00:00:00Z"}`, "", notAField},

		// POST /users
		{"register: invalid UTF-8 in a value", "POST", "/api/v1/users", "{\"user_ids\":[7,\"8\xff\"]}", "", utf8Problem},
		{"register: invalid UTF-8 in a name", "POST", "/api/v1/users", "{\"user_ids\xff\":[7]}", "", utf8Problem},
		{"register: user_ids twice", "POST", "/api/v1/users", `{"user_ids":[7],"user_ids":[8]}`, "", twice},
		{"register: USER_IDS", "POST", "/api/v1/users", `{"USER_IDS":[7]}`, "", notAField},
		{"register: User_Ids after user_ids", "POST", "/api/v1/users", `{"user_ids":[7],"User_Ids":[8]}`, "", notAField},
		{"register: user_ids with a long s", "POST", "/api/v1/users", `{"user_idſ":[7]}`, "", notAField},

		// POST /users/{user_id}/segments
		{"change: invalid UTF-8 in a slug", "POST", "/api/v1/users/1/segments", "{\"add\":[\"B\xff\"]}", "", utf8Problem},
		{"change: invalid UTF-8 in expires_at", "POST", "/api/v1/users/1/segments", "{\"add\":[\"B\"],\"expires_at\":\"2099-01-01T00:00:00Z\xff\"}", "", utf8Problem},
		{"change: invalid UTF-8 in a name", "POST", "/api/v1/users/1/segments", "{\"a\xffdd\":[\"B\"]}", "", utf8Problem},
		{"change: add twice", "POST", "/api/v1/users/1/segments", `{"add":[],"add":["B"]}`, "", twice},
		{"change: remove twice", "POST", "/api/v1/users/1/segments", `{"remove":[],"remove":["A"]}`, "", twice},
		{"change: ttl_seconds twice", "POST", "/api/v1/users/1/segments", `{"add":["B"],"ttl_seconds":60,"ttl_seconds":120}`, "", twice},
		{"change: Add", "POST", "/api/v1/users/1/segments", `{"Add":["B"]}`, "", notAField},
		{"change: ADD", "POST", "/api/v1/users/1/segments", `{"ADD":["B"]}`, "", notAField},
		{"change: Remove after remove", "POST", "/api/v1/users/1/segments", `{"remove":[],"Remove":["A"]}`, "", notAField},
		{"change: TTL_SECONDS", "POST", "/api/v1/users/1/segments", `{"add":["B"],"TTL_SECONDS":60}`, "", notAField},
		{"change: ttl_ſeconds", "POST", "/api/v1/users/1/segments", `{"add":["B"],"ttl_ſeconds":60}`, "", notAField},

		// POST /reports/history
		{"history report: invalid UTF-8 in a value", "POST", "/api/v1/reports/history", "{\"period\":\"2023-08\xff\"}", "", utf8Problem},
		{"history report: invalid UTF-8 in a name", "POST", "/api/v1/reports/history", "{\"per\xffiod\":\"2023-08\"}", "", utf8Problem},
		{"history report: period twice", "POST", "/api/v1/reports/history", `{"period":"2023-08","period":"2023-09"}`, "", twice},
		{"history report: user_id twice", "POST", "/api/v1/reports/history", `{"period":"2023-08","user_id":1,"user_id":2}`, "", twice},
		{"history report: Period", "POST", "/api/v1/reports/history", `{"Period":"2023-08"}`, "", notAField},
		{"history report: USER_ID", "POST", "/api/v1/reports/history", `{"period":"2023-08","USER_ID":1}`, "", notAField},

		// POST /reports/members
		{"members report: invalid UTF-8 in a value", "POST", "/api/v1/reports/members", "{\"slug\":\"A\xff\"}", "", utf8Problem},
		{"members report: invalid UTF-8 in a name", "POST", "/api/v1/reports/members", "{\"sl\xffug\":\"A\"}", "", utf8Problem},
		{"members report: slug twice", "POST", "/api/v1/reports/members", `{"slug":"A","slug":"B"}`, "", twice},
		{"members report: SLUG", "POST", "/api/v1/reports/members", `{"SLUG":"A"}`, "", notAField},
		{"members report: Slug after slug", "POST", "/api/v1/reports/members", `{"slug":"A","Slug":"B"}`, "", notAField},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct := tc.contentType
			if ct == "" {
				ct = "application/json"
			}
			before := a.dbState()
			r := a.do(tc.method, tc.path, tc.body, "Content-Type", ct)
			if diff := cmp.Diff(before, a.dbState()); diff != "" {
				t.Errorf("the database changed (-before +after):\n%s", diff)
			}
			p := r.problem(t, http.StatusBadRequest)
			if p.Type != malformedRequestType {
				t.Errorf("type = %q, want %q", p.Type, malformedRequestType)
			}
			if !strings.Contains(p.Detail, tc.detail) {
				t.Errorf("detail %q lacks %q", p.Detail, tc.detail)
			}
		})
	}
	if diff := cmp.Diff(start, a.dbState()); diff != "" {
		t.Errorf("the database changed over all the requests (-before +after):\n%s", diff)
	}
}

// A case-variant of a name says which name the contract has.
func TestCaseVariantNameIsNamed(t *testing.T) {
	a := newAPI(t)
	p := a.do("POST", "/api/v1/segments", `{"SLUG":"C_1"}`).problem(t, http.StatusBadRequest)
	if !strings.Contains(p.Detail, `"SLUG"`) || !strings.Contains(p.Detail, `"slug"`) {
		t.Errorf("detail %q names neither the name sent nor the contract's", p.Detail)
	}
}

// Valid non-ASCII text, raw or escaped, is stored and read back byte for
// byte.
func TestNonASCIITextIsKeptByteForByte(t *testing.T) {
	a := newAPI(t)
	const first = "café ☕ 𝄞 naïve — Привет"
	const second = "ünïcödé \u2615 \U0001D11E"

	check := func(t *testing.T, want string) {
		t.Helper()
		r := a.mustDo(http.StatusOK, "GET", "/api/v1/segments/CAFE", nil, nil)
		if !strings.Contains(string(r.body), `"description":"`+want+`"`) {
			t.Errorf("GET body %s lacks the description %q as raw UTF-8", r.body, want)
		}
		got := a.column(`SELECT encode(convert_to(description, 'UTF8'), 'hex') FROM segments WHERE slug = 'CAFE'`)
		if diff := cmp.Diff([]string{hex.EncodeToString([]byte(want))}, got); diff != "" {
			t.Errorf("stored bytes (-want +got):\n%s", diff)
		}
	}

	var s httpapi.Segment
	a.mustDo(http.StatusCreated, "POST", "/api/v1/segments", `{"slug":"CAFE","description":"`+first+`"}`, &s)
	if s.Description != first {
		t.Errorf("created description %q, want %q", s.Description, first)
	}
	check(t, first)

	// The same kind of text sent as escapes (a surrogate pair for U+1D11E).
	a.mustDo(http.StatusOK, "PATCH", "/api/v1/segments/CAFE", `{"description":"\u00fcn\u00efc\u00f6d\u00e9 \u2615 \ud834\udd1e"}`, &s)
	if s.Description != second {
		t.Errorf("patched description %q, want %q", s.Description, second)
	}
	check(t, second)
}
