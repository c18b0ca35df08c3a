package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/segments-service/segments/internal/auth"
	"github.com/segments-service/segments/internal/config"
)

// tokenCmd prints an HS256 token signed with AUTH_JWT_SECRET, for
// development and for tools such as the Postman collection.
func tokenCmd(cfg config.Config, args []string, stdout io.Writer, now time.Time) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	scope := fs.String("scope", auth.ScopeRead, `space-separated scopes: any of "`+strings.Join(knownScopes, " ")+`"`)
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	sub := fs.String("sub", "dev", "the token's subject: who calls")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("token: %w (flags: --scope, --ttl, --sub)", err)
	}
	if cfg.Auth.JWTSecret == "" {
		return errors.New("token: AUTH_JWT_SECRET is not set; tokens are signed with it")
	}
	scopes := strings.Fields(*scope)
	for _, s := range scopes {
		if !slices.Contains(knownScopes, s) {
			return fmt.Errorf("token: unknown scope %q (want any of %s)", s, strings.Join(knownScopes, ", "))
		}
	}
	if *ttl <= 0 {
		return errors.New("token: --ttl must be positive")
	}
	t, err := auth.Mint([]byte(cfg.Auth.JWTSecret), *sub, scopes, *ttl, cfg.Auth.Issuer, cfg.Auth.Audience, now)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, t)
	return nil
}

var knownScopes = []string{auth.ScopeRead, auth.ScopeWrite, auth.ScopeAdmin}
