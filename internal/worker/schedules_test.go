package worker_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/segments-service/segments/internal/domain"
	"github.com/segments-service/segments/internal/httpapi"
	"github.com/segments-service/segments/internal/worker"
	"github.com/segments-service/segments/tools/testenv"
)

// step is a schedule step of a request.
func step(at time.Time, percent float64) map[string]any {
	return map[string]any{"at": at.UTC().Format(time.RFC3339Nano), "auto_percent": percent}
}

// audit reads slug's audit log, newest first.
func (s *stack) audit(slug string) []httpapi.AuditEntry {
	s.t.Helper()
	var list httpapi.AuditList
	s.mustDo("GET", "/api/v1/segments/"+slug+"/audit?limit=1000", nil, &list)
	return list.Entries
}

// scheduled returns the entries of slug's audit log by the actor
// "schedule", oldest first.
func (s *stack) scheduled(slug string) []httpapi.AuditEntry {
	s.t.Helper()
	var out []httpapi.AuditEntry
	for _, e := range s.audit(slug) {
		if e.Actor != nil && *e.Actor == domain.ActorSchedule {
			out = append(out, e)
		}
	}
	slices.Reverse(out)
	return out
}

// changeOf returns the entry's change of field as JSON text.
func changeOf(t *testing.T, e httpapi.AuditEntry, field string) string {
	t.Helper()
	c, ok := e.Changes[field]
	if !ok {
		return ""
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// stepsVia counts the log lines of steps applied by how.
func (s *stack) stepsVia(via string) int {
	n := 0
	for _, e := range s.logs.FilterMessage("applied a scheduled step").All() {
		if e.ContextMap()["via"] == via {
			n++
		}
	}
	return n
}

// TestScheduleStepsApplyOnTime: a ramp of 10 % now, 30 % and 60 % four
// seconds apart (room for the first step's rollout and its check under
// the race detector on a busy machine), on 2,000 users with a real worker. Each step applies
// once its time has come, never before, as a PATCH would (a rollout that
// ends exact), leaves the plan, and is in the audit log under the actor
// "schedule" with the share's and the plan's from and to.
func TestScheduleStepsApplyOnTime(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{rolloutBatch: 250})
	users := ids(1, 2000)
	s.register(users)
	first := time.Now().Add(3 * time.Second).Truncate(time.Millisecond)
	second := first.Add(4 * time.Second)
	var created httpapi.Segment
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "RAMP", "auto_percent": 10,
		"auto_percent_schedule": []any{step(first, 30), step(second, 60)}}, &created)
	if len(created.AutoPercentSchedule) != 2 {
		t.Fatalf("created with the plan %+v", created.AutoPercentSchedule)
	}
	checkExact(t, s, "RAMP", 10, users, nil, nil, s.waitRollout("RAMP"))

	for i, want := range []struct {
		at      time.Time
		percent float64
		left    int
	}{{first, 30, 1}, {second, 60, 0}} {
		var seg httpapi.Segment
		testenv.Eventually(t, 30*time.Second, fmt.Sprintf("step %d was not applied", i), func() bool {
			s.mustDo("GET", "/api/v1/segments/RAMP", nil, &seg)
			return len(seg.AutoPercentSchedule) == want.left
		})
		if *seg.AutoPercent != want.percent {
			t.Fatalf("after step %d: %v %%, want %v", i, *seg.AutoPercent, want.percent)
		}
		checkExact(t, s, "RAMP", want.percent, users, nil, nil, s.waitRollout("RAMP"))
		entries := s.scheduled("RAMP")
		if len(entries) != i+1 {
			t.Fatalf("after step %d: %d entries by the schedule", i, len(entries))
		}
		e := entries[i]
		if e.At.Before(want.at) {
			t.Fatalf("step %d due at %s was applied at %s, before its time", i, want.at, e.At)
		}
		t.Logf("step %d due at %s applied %s later", i, want.at.Format(time.RFC3339Nano), e.At.Sub(want.at))
		from := []float64{10, 30}[i]
		if got, w := changeOf(t, e, "auto_percent"), fmt.Sprintf(`{"from":%v,"to":%v}`, from, want.percent); got != w {
			t.Fatalf("step %d's auto_percent change %s, want %s", i, got, w)
		}
		if e.Action != "update" || e.RequestID != nil || e.Error != nil || changeOf(t, e, "auto_percent_schedule") == "" {
			t.Fatalf("step %d's entry %+v", i, e)
		}
	}
	testenv.AssertHistoryReplays(t, s.pool)
}

// TestReplacedPlanNeverFires: a plan replaced before its step leaves its
// task queued; at its time the task finds another first step and does
// nothing; the new plan's step applies at its own time.
func TestReplacedPlanNeverFires(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	s.register(ids(1, 200))
	old := time.Now().Add(4 * time.Second) // the PATCH below replaces it well before
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "PLAN", "auto_percent": 10, "auto_percent_schedule": []any{step(old, 50)}}, nil)
	replaced := old.Add(2 * time.Second)
	s.mustDo("PATCH", "/api/v1/segments/PLAN", map[string]any{"auto_percent_schedule": []any{step(replaced, 20)}}, nil)
	var seg httpapi.Segment
	testenv.Eventually(t, 30*time.Second, "the new plan's step was not applied", func() bool {
		s.mustDo("GET", "/api/v1/segments/PLAN", nil, &seg)
		return len(seg.AutoPercentSchedule) == 0
	})
	entries := s.scheduled("PLAN")
	if len(entries) != 1 || changeOf(t, entries[0], "auto_percent") != `{"from":10,"to":20}` || *seg.AutoPercent != 20 {
		t.Fatalf("by the schedule: %+v; the segment at %v %%", entries, *seg.AutoPercent)
	}
	// The old step's task ran (at its time, before the new step) and did
	// nothing.
	info, err := asynq.NewInspectorFromRedisClient(s.rdb).GetTaskInfo(s.queue, stepTaskID(t, s.segmentID("PLAN"), old))
	if err == nil && info.State != asynq.TaskStateCompleted {
		t.Fatalf("the old step's task is %v", info.State)
	}
	if n := s.scalar(`SELECT count(*) FROM audit_log WHERE changes->'auto_percent'->>'to' = '50'`); n != 0 {
		t.Fatalf("the replaced step was applied")
	}
}

func stepTaskID(t *testing.T, segmentID int64, at time.Time) string {
	t.Helper()
	_, opts, err := worker.NewStepTask(domain.ScheduledStep{SegmentID: segmentID, Slug: "x", At: at.Truncate(time.Microsecond)})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		if o.Type() == asynq.TaskIDOpt {
			return o.Value().(string)
		}
	}
	t.Fatal("no task id")
	return ""
}

// TestLostStepTaskIsSweptUp: a step whose task was removed from Redis is
// applied by the periodic sweep.
func TestLostStepTaskIsSweptUp(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{sweepInterval: time.Second})
	s.register(ids(1, 100))
	at := time.Now().Add(5 * time.Second) // its task is removed well before
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "LOST", "auto_percent": 10, "auto_percent_schedule": []any{step(at, 40)}}, nil)
	if err := asynq.NewInspectorFromRedisClient(s.rdb).DeleteTask(s.queue, stepTaskID(t, s.segmentID("LOST"), at)); err != nil {
		t.Fatalf("remove the step's task: %v", err)
	}
	testenv.Eventually(t, 30*time.Second, "the sweep did not apply the step", func() bool { return len(s.scheduled("LOST")) == 1 })
	if s.stepsVia("sweep") != 1 || s.stepsVia("task") != 0 {
		t.Fatalf("steps applied by the sweep %d, by a task %d; want 1 and 0", s.stepsVia("sweep"), s.stepsVia("task"))
	}
	checkExact(t, s, "LOST", 40, ids(1, 100), nil, nil, s.waitRollout("LOST"))
}

// TestStepWhileTheWorkerIsDown: no worker runs at the step's time; the
// worker applies it when it starts.
func TestStepWhileTheWorkerIsDown(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{workerLater: true})
	s.register(ids(1, 100))
	at := time.Now().Add(time.Second)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "DOWN", "auto_percent": 0, "auto_percent_schedule": []any{step(at, 100)}}, nil)
	time.Sleep(time.Until(at) + time.Second)
	if n := len(s.scheduled("DOWN")); n != 0 {
		t.Fatalf("applied with no worker running: %d entries", n)
	}
	s.startWorker()
	testenv.Eventually(t, 30*time.Second, "the started worker did not apply the step", func() bool { return len(s.scheduled("DOWN")) == 1 })
	seg := s.waitRollout("DOWN")
	if got := s.members("DOWN"); len(seg.AutoPercentSchedule) != 0 || len(got) != 100 {
		t.Fatalf("after the step: %d members, want 100", len(got))
	}
}

// TestStepInAFullLayer: a step that needs more buckets than its layer has
// free leaves the share as it is, leaves the plan, and is recorded with
// no changes and the problem type; the next step still applies.
func TestStepInAFullLayer(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	s.register(ids(1, 500))
	s.mustDo("POST", "/api/v1/layers", map[string]any{"slug": "L"}, nil)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "BIG", "auto_percent": 60, "layer": "L"}, nil)
	at := time.Now().Add(2 * time.Second)
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "SMALL", "auto_percent": 30, "layer": "L",
		"auto_percent_schedule": []any{step(at, 50), step(at.Add(time.Second), 40)}}, nil)
	testenv.Eventually(t, 30*time.Second, "the steps did not run", func() bool { return len(s.scheduled("SMALL")) == 2 })
	entries := s.scheduled("SMALL")
	failed, applied := entries[0], entries[1]
	if failed.Error == nil || *failed.Error != domain.ProblemLayerFull || len(failed.Changes) != 0 || failed.Action != "update" {
		t.Fatalf("the step into a full layer: %+v", failed)
	}
	if applied.Error != nil || changeOf(t, applied, "auto_percent") != `{"from":30,"to":40}` {
		t.Fatalf("the next step: %+v", applied)
	}
	s.waitRollout("BIG")
	s.waitRollout("SMALL")
	var layer httpapi.Layer
	s.mustDo("GET", "/api/v1/layers/L", nil, &layer)
	if fmt.Sprint(layer.Free) != "[]" {
		t.Fatalf("layer after the steps: %+v", layer)
	}
	checkLayer(t, s, "L")
}

// TestScheduledWorkIsAudited: a deletion at its delete_at is recorded
// under the actor "schedule" with no request id; an import's start and
// end under the uploader's request (authentication is off: no actor).
func TestScheduledWorkIsAudited(t *testing.T) {
	t.Parallel()
	s := newStack(t, stackOptions{})
	s.mustDo("POST", "/api/v1/segments", map[string]any{"slug": "GONE", "delete_at": time.Now().Add(10 * time.Second).UTC().Format(time.RFC3339Nano)}, nil)
	imp := s.upload("GONE", "mode=add", []int64{3, 1, 2, 3})
	if done := s.waitImport(imp.ID); done.Status != "done" {
		t.Fatalf("import %+v", done)
	}
	testenv.Eventually(t, 30*time.Second, "the segment was not deleted", func() bool {
		return s.scalar(`SELECT count(*) FROM segments WHERE slug = 'GONE'`) == 0
	})
	entries := s.audit("GONE")
	if len(entries) != 4 {
		t.Fatalf("%d entries: %+v", len(entries), entries)
	}
	del, end, start := entries[0], entries[1], entries[2]
	if del.Action != "delete" || del.Actor == nil || *del.Actor != domain.ActorSchedule || del.RequestID != nil || len(del.Changes) != 0 {
		t.Fatalf("the deletion's entry: %+v", del)
	}
	if start.Target.Kind != "import" || start.Action != "create" || start.Actor != nil || start.RequestID == nil ||
		changeOf(t, start, "id") != fmt.Sprintf(`{"from":null,"to":%d}`, imp.ID) || changeOf(t, start, "mode") != `{"from":null,"to":"add"}` {
		t.Fatalf("the import's start: %+v", start)
	}
	if end.Target.Kind != "import" || end.Action != "update" || end.RequestID == nil || *end.RequestID != *start.RequestID ||
		changeOf(t, end, "status") != `{"from":"pending","to":"done"}` || changeOf(t, end, "received") != `{"from":null,"to":3}` ||
		changeOf(t, end, "added") != `{"from":0,"to":3}` {
		t.Fatalf("the import's end: %+v", end)
	}
}
