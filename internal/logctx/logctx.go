// Package logctx carries a logger and its fields in a context, so that code
// below the HTTP layer and inside task handlers logs with the request id or
// task id of the work it does.
package logctx

import (
	"context"

	"go.uber.org/zap"
)

type key struct{}

type entry struct {
	log    *zap.Logger
	fields []zap.Field
}

// With returns ctx carrying log and fields. The child logger is built only
// when From asks for it: most requests log one line or none.
func With(ctx context.Context, log *zap.Logger, fields ...zap.Field) context.Context {
	return context.WithValue(ctx, key{}, entry{log: log, fields: fields})
}

// From returns the logger ctx carries, with its fields, or fallback if it
// carries none.
func From(ctx context.Context, fallback *zap.Logger) *zap.Logger {
	if e, ok := ctx.Value(key{}).(entry); ok {
		return e.log.With(e.fields...)
	}
	return fallback
}

// AddFields returns ctx whose logger carries fields besides those it had;
// the logger is still built only when From asks. Without a logger in ctx,
// ctx is returned as it is.
func AddFields(ctx context.Context, fields ...zap.Field) context.Context {
	e, ok := ctx.Value(key{}).(entry)
	if !ok {
		return ctx
	}
	e.fields = append(e.fields[:len(e.fields):len(e.fields)], fields...)
	return context.WithValue(ctx, key{}, e)
}
