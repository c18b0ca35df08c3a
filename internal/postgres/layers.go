package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/segments-service/segments/internal/domain"
)

// LayerRepo stores layers.
type LayerRepo struct {
	pool *pgxpool.Pool
}

// NewLayerRepo returns a LayerRepo on pool.
func NewLayerRepo(pool *pgxpool.Pool) *LayerRepo { return &LayerRepo{pool: pool} }

// Bucket ranges travel as two arrays, the ranges' first buckets and their
// ends; the database keeps them as an int4multirange (segments.layer_buckets).

// rangesOf selects the ranges of the multirange column col as two arrays.
func rangesOf(col string) string {
	return `ARRAY(SELECT lower(r) FROM unnest(` + col + `) AS r ORDER BY 1),
	        ARRAY(SELECT upper(r) FROM unnest(` + col + `) AS r ORDER BY 1)`
}

// multirangeSQL builds an int4multirange from the arrays $n and $n+1.
func multirangeSQL(n int) string {
	return fmt.Sprintf(`(SELECT int4multirange(VARIADIC coalesce(array_agg(int4range(f, t)), '{}'))
	                     FROM unnest($%d::integer[], $%d::integer[]) AS r(f, t))`, n, n+1)
}

// bucketArrays splits rs into the two arrays multirangeSQL reads.
func bucketArrays(rs domain.BucketRanges) (froms, tos []int32) {
	froms, tos = []int32{}, []int32{}
	for _, r := range rs {
		froms = append(froms, int32(r.From))
		tos = append(tos, int32(r.To))
	}
	return froms, tos
}

// bucketRanges joins the two arrays rangesOf selects.
func bucketRanges(froms, tos []int32) domain.BucketRanges {
	if len(froms) == 0 {
		return nil
	}
	rs := make(domain.BucketRanges, len(froms))
	for i := range froms {
		rs[i] = domain.BucketRange{From: int(froms[i]), To: int(tos[i])}
	}
	return rs
}

// CreateLayer inserts a layer, or returns domain.ErrConflict if the slug
// is taken.
func (r *LayerRepo) CreateLayer(ctx context.Context, nl domain.NewLayer) (domain.Layer, error) {
	const q = `INSERT INTO layers (slug, description) VALUES ($1, $2) RETURNING id, slug, description, created_at`
	l := domain.Layer{Segments: []domain.LayerSegment{}}
	err := withTx(ctx, r.pool, func(tx pgx.Tx) error {
		if err := setAudit(ctx, tx, ""); err != nil {
			return err
		}
		return tx.QueryRow(ctx, q, nl.Slug, nl.Description).Scan(&l.ID, &l.Slug, &l.Description, &l.CreatedAt)
	})
	if pgCode(err) == uniqueViolation {
		return domain.Layer{}, domain.Conflictf("layer %q already exists", nl.Slug)
	}
	if err != nil {
		return domain.Layer{}, fmt.Errorf("insert layer %s: %w", nl.Slug, dbError(err))
	}
	return l, nil
}

// layerSegmentsSQL reads the segments of the layer $1, by slug, with
// their buckets.
var layerSegmentsSQL = `
	SELECT slug, (auto_percent * 100)::integer, ` + rangesOf("layer_buckets") + `
	FROM segments WHERE layer_id = $1 ORDER BY slug`

// readLayerSegments reads the segments of the layer with id layerID.
func readLayerSegments(ctx context.Context, q dbtx, layerID int64) ([]domain.LayerSegment, error) {
	rows, _ := q.Query(ctx, layerSegmentsSQL, layerID)
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.LayerSegment, error) {
		var (
			s          domain.LayerSegment
			froms, tos []int32
		)
		err := row.Scan(&s.Slug, &s.AutoPercent, &froms, &tos)
		s.Ranges = bucketRanges(froms, tos)
		return s, err
	})
}

// Layer returns the layer named slug with its segments, or
// domain.ErrNotFound.
func (r *LayerRepo) Layer(ctx context.Context, slug string) (domain.Layer, error) {
	return readAgain(ctx, r.pool, func() (domain.Layer, error) {
		var l domain.Layer
		err := pgx.BeginTxFunc(ctx, r.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
			const q = `SELECT id, slug, description, created_at FROM layers WHERE slug = $1`
			if err := tx.QueryRow(ctx, q, slug).Scan(&l.ID, &l.Slug, &l.Description, &l.CreatedAt); err != nil {
				return err
			}
			var err error
			l.Segments, err = readLayerSegments(ctx, tx, l.ID)
			return err
		})
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.Layer{}, domain.NotFoundf("layer %q does not exist", slug)
		}
		if err != nil {
			return domain.Layer{}, fmt.Errorf("select layer %s: %w", slug, dbError(err))
		}
		return l, nil
	})
}

// Layers returns up to limit layers whose slugs sort after after, in byte
// order of slug, each with its segments.
func (r *LayerRepo) Layers(ctx context.Context, after string, limit int) ([]domain.Layer, error) {
	return readAgain(ctx, r.pool, func() ([]domain.Layer, error) {
		var layers []domain.Layer
		err := pgx.BeginTxFunc(ctx, r.pool, pgx.TxOptions{AccessMode: pgx.ReadOnly, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
			const q = `SELECT id, slug, description, created_at FROM layers WHERE slug > $1 ORDER BY slug LIMIT $2`
			rows, _ := tx.Query(ctx, q, after, limit)
			var err error
			layers, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.Layer, error) {
				var l domain.Layer
				return l, row.Scan(&l.ID, &l.Slug, &l.Description, &l.CreatedAt)
			})
			if err != nil {
				return err
			}
			for i := range layers {
				if layers[i].Segments, err = readLayerSegments(ctx, tx, layers[i].ID); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list layers after %q: %w", after, dbError(err))
		}
		return layers, nil
	})
}

// DeleteLayer deletes the layer named slug if it has no segments. It
// returns domain.ErrNotFound, or a *domain.LayerNotEmptyError.
func (r *LayerRepo) DeleteLayer(ctx context.Context, slug string) error {
	return withTx(ctx, r.pool, func(tx pgx.Tx) error {
		// The layer's row is locked first: a segment created in it at the
		// same time either commits before (and is found) or waits and
		// finds the layer gone.
		const lock = `SELECT id FROM layers WHERE slug = $1 FOR UPDATE`
		var id int64
		err := tx.QueryRow(ctx, lock, slug).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return domain.NotFoundf("layer %q does not exist", slug)
		}
		if err != nil {
			return fmt.Errorf("lock layer %s: %w", slug, dbError(err))
		}
		segs, err := readLayerSegments(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("segments of layer %s: %w", slug, dbError(err))
		}
		if len(segs) > 0 {
			e := &domain.LayerNotEmptyError{Layer: slug}
			for _, s := range segs {
				e.Segments = append(e.Segments, s.Slug)
			}
			return e
		}
		if err := setAudit(ctx, tx, ""); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM layers WHERE id = $1`, id); err != nil {
			return fmt.Errorf("delete layer %s: %w", slug, dbError(err))
		}
		return nil
	})
}

// lockLayer locks the layer named slug for the allocation of its buckets
// and returns its id and its buckets no segment owns. It returns
// domain.ErrInvalid naming the layer field if there is no such layer.
func lockLayer(ctx context.Context, tx pgx.Tx, slug string) (id int64, free domain.BucketRanges, err error) {
	err = tx.QueryRow(ctx, `SELECT id FROM layers WHERE slug = $1 FOR UPDATE`, slug).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, domain.Invalid(fmt.Sprintf("no layer is named %q", slug),
			domain.FieldError{Field: "/layer", Message: "must name an existing layer"})
	}
	if err != nil {
		return 0, nil, fmt.Errorf("lock layer %s: %w", slug, dbError(err))
	}
	const q = `SELECT ` + "ARRAY(SELECT lower(r) FROM unnest(layer_buckets) AS r), ARRAY(SELECT upper(r) FROM unnest(layer_buckets) AS r)" + `
		FROM segments WHERE layer_id = $1 AND layer_buckets IS NOT NULL`
	rows, _ := tx.Query(ctx, q, id)
	owned, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (domain.BucketRanges, error) {
		var froms, tos []int32
		err := row.Scan(&froms, &tos)
		return bucketRanges(froms, tos), err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("buckets of layer %s: %w", slug, dbError(err))
	}
	all := domain.BucketRanges{}
	for _, o := range owned {
		all = all.Union(o)
	}
	return id, domain.AllBuckets().Minus(all), nil
}
