package postgres

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/segments-service/segments/internal/domain"
)

func TestDBErrorMarksUnavailability(t *testing.T) {
	tests := []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"server shutting down", &pgconn.PgError{Code: "57P01"}, true},
		{"server crashed", &pgconn.PgError{Code: "57P02"}, true},
		{"server starting", &pgconn.PgError{Code: "57P03"}, true},
		{"no connection slot", &pgconn.PgError{Code: "53300"}, true},
		{"connection failure", &pgconn.PgError{Code: "08006"}, true},
		{"read-only standby", &pgconn.PgError{Code: "25006"}, true},
		{"connection cut mid-answer", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"statement timeout", &pgconn.PgError{Code: "57014"}, false},
		{"a domain error", domain.NotFoundf("no segment"), false},
		{"any other error", errors.New("boom"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := dbError(fmt.Errorf("wrapped: %w", tc.err))
			if got := errors.Is(err, domain.ErrUnavailable); got != tc.unavailable {
				t.Errorf("unavailable = %v, want %v (%v)", got, tc.unavailable, err)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("the original error is lost: %v", err)
			}
		})
	}
	if dbError(nil) != nil {
		t.Error("dbError(nil) is not nil")
	}
}
