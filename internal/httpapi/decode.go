package httpapi

import (
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/go-playground/validator/v10"

	"github.com/segments-service/segments/internal/domain"
)

// maxBodyBytes bounds every request body.
const maxBodyBytes = 1 << 20

// maxFieldProblems bounds how many wrong fields one response lists.
const maxFieldProblems = 50

// requestError is a request the server cannot read: it is answered with
// its own status and never reaches a service.
type requestError struct {
	status int
	typ    string
	detail string
}

func (e *requestError) Error() string { return e.detail }

func malformed(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, typ: typeMalformed, detail: fmt.Sprintf(format, args...)}
}

// decode reads r's JSON body into dst and validates it. On failure it has
// written the problem response and returns false.
func decode(w http.ResponseWriter, r *http.Request, v *validator.Validate, dst any) bool {
	err := decodeJSON(w, r, dst)
	if err == nil {
		err = validate(v, dst)
	}
	if err == nil {
		return true
	}
	var re *requestError
	if errors.As(err, &re) {
		title := http.StatusText(re.status)
		if re.typ == typeMalformed {
			title = "Request body is malformed"
		}
		writeProblem(w, r, Problem{Type: re.typ, Title: title, Status: re.status, Detail: re.detail})
		return false
	}
	respondError(w, r, err)
	return false
}

// strictJSON are the options every request body is read with: a member
// name must be the contract's exactly (case included) and appear once per
// object, strings must be valid UTF-8 (no lone surrogate escapes either),
// and a member the request type does not have is an error. Each of these is
// a 400 before any handler sees the request, so nothing changes.
var strictJSON = json.JoinOptions(
	json.MatchCaseInsensitiveNames(false),
	json.RejectUnknownMembers(true),
	jsontext.AllowDuplicateNames(false),
	jsontext.AllowInvalidUTF8(false),
)

// decoders holds strict decoders between requests: a new one allocates
// a read buffer of several KiB for each body.
var decoders = sync.Pool{New: func() any { return new(jsontext.Decoder) }}

// noBody is what a pooled decoder reads from, so that it keeps no body.
var noBody = strings.NewReader("")

func getDecoder(r io.Reader) *jsontext.Decoder {
	dec := decoders.Get().(*jsontext.Decoder)
	dec.Reset(r, strictJSON)
	return dec
}

// putDecoder pools dec unless it read more than 64 KiB (its buffer grew
// at least that much: not worth keeping).
func putDecoder(dec *jsontext.Decoder) {
	if dec.InputOffset()+int64(len(dec.UnreadBuffer())) > 64<<10 {
		return
	}
	dec.Reset(noBody)
	decoders.Put(dec)
}

// decodeJSON reads r's body, a single JSON object of at most maxBodyBytes,
// into dst with the strictJSON options. Every error it returns is a
// *requestError.
func decodeJSON(w http.ResponseWriter, r *http.Request, dst any) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return &requestError{status: http.StatusUnsupportedMediaType, typ: typeBlank,
			detail: fmt.Sprintf("Content-Type must be application/json, not %q", r.Header.Get("Content-Type"))}
	}
	dec := getDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	defer putDecoder(dec)
	err = json.UnmarshalDecode(dec, dst)
	if err == nil {
		// One JSON value, then nothing but white space.
		if _, err := dec.ReadToken(); err != io.EOF {
			return malformed("the body must hold a single JSON object; found more after it")
		}
		return nil
	}
	var (
		syntaxErr *jsontext.SyntacticError
		semErr    *json.SemanticError
		tooBig    *http.MaxBytesError
		fieldErr  *fieldDecodeError
	)
	switch {
	case errors.As(err, &tooBig):
		return &requestError{status: http.StatusRequestEntityTooLarge, typ: typeBlank,
			detail: fmt.Sprintf("the body is larger than %d bytes", maxBodyBytes)}
	case err == io.EOF:
		return malformed("the body is empty; a JSON object is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return malformed("the body ends in the middle of a JSON value (truncated?)")
	case errors.As(err, &syntaxErr) && errors.Is(syntaxErr.Err, jsontext.ErrDuplicateName):
		return malformed("the body gives %q twice; each name may appear once in an object", syntaxErr.JSONPointer.LastToken())
	case errors.As(err, &syntaxErr):
		where := ""
		if syntaxErr.JSONPointer != "" {
			where = fmt.Sprintf(" in %q", syntaxErr.JSONPointer)
		}
		return malformed("the body is not valid JSON: %v%s (at byte %d)", syntaxErr.Err, where, syntaxErr.ByteOffset)
	case errors.As(err, &fieldErr):
		return malformed("%s", fieldErr.Error())
	case errors.As(err, &semErr) && errors.Is(semErr.Err, json.ErrUnknownName):
		name := semErr.JSONPointer.LastToken()
		if known := contractName(dst, name); known != "" {
			return malformed("%q is not a field of this request (names are case-sensitive: %q is)", name, known)
		}
		return malformed("%q is not a field of this request", name)
	case errors.As(err, &semErr) && semErr.JSONPointer == "":
		return malformed("the body must be a JSON object, not %s", kindName(semErr))
	case errors.As(err, &semErr) && semErr.GoType != nil:
		return malformed("field %q must be %s, not %s", strings.TrimPrefix(string(semErr.JSONPointer), "/"),
			describeType(semErr.GoType), kindName(semErr))
	}
	return malformed("the body cannot be read: %v", err)
}

// kindName names the JSON value e could not read the way encoding/json
// did: "string", "number 1.5", "array".
func kindName(e *json.SemanticError) string {
	switch e.JSONKind {
	case '"':
		return "string"
	case '0':
		if len(e.JSONValue) > 0 {
			return "number " + string(e.JSONValue)
		}
		return "number"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	case '{':
		return "object"
	case '[':
		return "array"
	}
	return "this value"
}

// contractName is the member name of dst's struct type that name spells in
// another case ("SLUG" for "slug"), or "".
func contractName(dst any, name string) string {
	t := reflect.TypeOf(dst)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return ""
	}
	for f := range t.Fields() {
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag != "" && tag != "-" && strings.EqualFold(tag, name) {
			return tag
		}
	}
	return ""
}

// describeType names a Go type the way a JSON client thinks of it.
func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int64, reflect.Int, reflect.Int32:
		return "an integer from -9223372036854775808 to 9223372036854775807"
	case reflect.String:
		return "a string"
	case reflect.Float64:
		return "a number"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(describeType(t.Elem()), "a ")
	case reflect.Bool:
		return "true or false"
	case reflect.Pointer:
		return describeType(t.Elem())
	}
	return "a " + t.String()
}

// fieldDecodeError is a field whose JSON value has the right type but
// cannot be read (a timestamp that is not RFC 3339, say).
type fieldDecodeError struct{ field, detail string }

func (e *fieldDecodeError) Error() string { return fmt.Sprintf("field %q %s", e.field, e.detail) }

// expiryTime is the expires_at field of a request: an RFC 3339 time.
type expiryTime struct{ time.Time }

// UnmarshalJSON reads an RFC 3339 string.
func (t *expiryTime) UnmarshalJSON(b []byte) error { return parseRFC3339(&t.Time, "expires_at", b) }

// rfc3339Time is the delete_at field of a request: an RFC 3339 time.
type rfc3339Time struct{ time.Time }

// UnmarshalJSON reads an RFC 3339 string.
func (t *rfc3339Time) UnmarshalJSON(b []byte) error { return parseRFC3339(&t.Time, "delete_at", b) }

// stepTime is the at of a percent schedule's step: an RFC 3339 time.
type stepTime struct{ time.Time }

// UnmarshalJSON reads an RFC 3339 string.
func (t *stepTime) UnmarshalJSON(b []byte) error { return parseRFC3339(&t.Time, "at", b) }

// parseRFC3339 reads the JSON string b, field's value, into t.
func parseRFC3339(t *time.Time, field string, b []byte) error {
	s, err := strconv.Unquote(string(b))
	if err == nil {
		*t, err = time.Parse(time.RFC3339, s)
	}
	if err != nil {
		return &fieldDecodeError{field: field, detail: fmt.Sprintf("must be an RFC 3339 time such as \"2030-01-02T15:04:05Z\", not %s", b)}
	}
	return nil
}

// validate checks dst's validate tags and reports every wrong field (up to
// maxFieldProblems) as domain.ErrInvalid.
func validate(v *validator.Validate, dst any) error {
	err := v.Struct(dst)
	var verrs validator.ValidationErrors
	if !errors.As(err, &verrs) {
		return err
	}
	fields := make([]domain.FieldError, 0, min(len(verrs), maxFieldProblems))
	for _, fe := range verrs[:min(len(verrs), maxFieldProblems)] {
		fields = append(fields, domain.FieldError{Field: jsonPointer(fe.Namespace()), Message: fieldMessage(fe)})
	}
	msg := strings.TrimPrefix(fields[0].Field, "/") + " " + fields[0].Message
	switch n := len(verrs); {
	case n > maxFieldProblems:
		msg += fmt.Sprintf(" (and %d more problems; errors lists the first %d)", n-1, maxFieldProblems)
	case n > 1:
		msg += fmt.Sprintf(" (and %d more problems, listed in errors)", n-1)
	}
	return domain.Invalid(msg, fields...)
}

// jsonPointer turns a validator namespace ("changeRequest.add[3]") into a
// JSON pointer ("/add/3").
func jsonPointer(ns string) string {
	_, path, _ := strings.Cut(ns, ".")
	path = strings.NewReplacer("[", ".", "]", "").Replace(path)
	return "/" + strings.ReplaceAll(path, ".", "/")
}

func fieldMessage(fe validator.FieldError) string {
	switch fe.Tag() {
	case "required":
		return "is required"
	case "slug":
		return fmt.Sprintf("must match %s, not %q", domain.SlugPattern, fe.Value())
	case "text":
		return "must be text without NUL bytes"
	case "period":
		return fmt.Sprintf("must be a month as YYYY-MM (2023-08), not %q", fe.Value())
	case "hundredths":
		return fmt.Sprintf("must have at most two decimals, not %v", fe.Value())
	case "gt":
		return fmt.Sprintf("must be greater than %s", fe.Param())
	case "gte", "min":
		if fe.Kind() == reflect.Slice {
			return fmt.Sprintf("must have at least %s item(s)", fe.Param())
		}
		return fmt.Sprintf("must be at least %s", fe.Param())
	case "lte", "max":
		switch fe.Kind() {
		case reflect.Slice:
			return fmt.Sprintf("must have at most %s items", fe.Param())
		case reflect.String:
			return fmt.Sprintf("must be at most %s characters long", fe.Param())
		}
		return fmt.Sprintf("must be at most %s", fe.Param())
	}
	return fmt.Sprintf("breaks the rule %q", fe.Tag())
}

// newValidator returns the validator for request types: JSON field names,
// plus the "slug" rule.
func newValidator() *validator.Validate {
	v := validator.New(validator.WithRequiredStructEnabled())
	v.RegisterTagNameFunc(func(f reflect.StructField) string {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			return ""
		}
		return name
	})
	_ = v.RegisterValidation("slug", func(fl validator.FieldLevel) bool {
		return domain.ValidSlug(fl.Field().String())
	})
	_ = v.RegisterValidation("text", func(fl validator.FieldLevel) bool {
		return validText(fl.Field().String())
	})
	_ = v.RegisterValidation("period", func(fl validator.FieldLevel) bool {
		_, err := domain.ParsePeriod(fl.Field().String())
		return err == nil
	})
	_ = v.RegisterValidation("hundredths", func(fl validator.FieldLevel) bool {
		x := fl.Field().Float() * 100
		return math.Abs(x-math.Round(x)) < 1e-6
	})
	return v
}
