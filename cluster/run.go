package cluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/repo"
	"golang.org/x/sync/errgroup"
)

// Phases of a component in a run, and of the run itself (cluster.md).
const (
	PhasePending   = "pending"
	PhaseRunning   = "running"
	PhaseCompleted = "completed"
	PhaseFailed    = "failed"
	PhaseMissing   = "missing"
)

// Run records are files under runs/ (docs/format.md), each written once and
// never changed, like every other repository file. A run's state is the
// merge of its records, so processes on several nodes add to one run at the
// same time without reading and rewriting a shared file: there is nothing
// for them to race on.
//
//   - "start": the run began (or a process joined it), with the components
//     it expects. The run started at its earliest start record and expects
//     every component any of them names.
//   - "event": a component's phase changed (running, completed, failed).
//     The latest event of a component wins.
//   - "close": the run is closed; components that never finished are missing.
type record struct {
	Version  int       `json:"version"`
	Type     string    `json:"type"` // start, event, close
	Run      string    `json:"run"`
	Cluster  string    `json:"cluster"`
	Time     time.Time `json:"time"`
	Hostname string    `json:"hostname"`
	PID      int       `json:"pid"`

	// start
	Expected          []Expected `json:"expected,omitempty"`
	RunTimeoutSeconds float64    `json:"run_timeout_seconds,omitempty"`
	// event
	Event *Event `json:"event,omitempty"`
}

const (
	recordStart = "start"
	recordEvent = "event"
	recordClose = "close"
)

// Expected is a component a run waits for.
type Expected struct {
	Name string `json:"name"`
	Node string `json:"node"` // empty: reported by whichever node runs it
	Kind string `json:"kind"`
}

// Event is a change of a component's phase in a run.
type Event struct {
	Component  string  `json:"component"`
	Node       string  `json:"node"`
	Kind       string  `json:"kind"`
	Phase      string  `json:"phase"` // running, completed, failed
	SnapshotID string  `json:"snapshot_id,omitempty"`
	Bytes      int64   `json:"bytes"`
	Duration   float64 `json:"duration_seconds"`
	Error      string  `json:"error,omitempty"`
}

// Run is the state of a run, merged from its records.
type Run struct {
	ID         string
	Cluster    string
	Phase      string // running, completed, failed
	Started    time.Time
	Finished   time.Time // zero while running
	Closed     bool
	Timeout    time.Duration
	Components []ComponentState
}

// ComponentState is a component's phase in a run.
type ComponentState struct {
	Name       string
	Node       string // empty: not reported yet by a component without a node
	Kind       string
	Phase      string
	SnapshotID string
	Bytes      int64
	Duration   float64 // seconds
	Error      string
	Updated    time.Time // the latest event; zero if none
}

// NewRunID returns a random (version 4) UUID.
func NewRunID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported systems
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// CheckRunID says whether id can name a run: it is given on command lines
// and in scripts, so it must be a plain word.
func CheckRunID(id string) error {
	if len(id) > 128 || !validName.MatchString(id) {
		return fmt.Errorf("invalid run id %q: use letters, digits, '.', '_' and '-' (a UUID, for example)", id)
	}
	return nil
}

func saveRecord(ctx context.Context, r *repo.Repo, rec record) error {
	rec.Version = 1
	_, rec.Hostname = repo.Whoami()
	rec.PID = os.Getpid()
	if _, err := r.SaveJSON(ctx, repo.RunFile, rec); err != nil {
		return fmt.Errorf("save run %s: %w", rec.Run, err)
	}
	return nil
}

// Join adds this process to run id of cfg's cluster, which is created if no
// record of it exists yet. It expects every component of cfg.
func Join(ctx context.Context, r *repo.Repo, id string, cfg *Config, now time.Time) error {
	if err := CheckRunID(id); err != nil {
		return err
	}
	// Only to check the cluster: a damaged record of some run must not stop
	// backups, and status reports it.
	runs, err := LoadRuns(ctx, r, now, func(repo.ID, error) {})
	if err != nil {
		return err
	}
	for _, run := range runs {
		if run.ID == id && run.Cluster != cfg.Cluster {
			return fmt.Errorf("run %s belongs to cluster %s, not %s", id, run.Cluster, cfg.Cluster)
		}
	}
	rec := record{Type: recordStart, Run: id, Cluster: cfg.Cluster, Time: now,
		RunTimeoutSeconds: cfg.RunTimeoutOr().Seconds()}
	for _, c := range cfg.Components {
		rec.Expected = append(rec.Expected, Expected{Name: c.Name, Node: c.Node, Kind: c.Kind})
	}
	return saveRecord(ctx, r, rec)
}

// Report records a component's event in run id.
func Report(ctx context.Context, r *repo.Repo, id, cluster string, ev Event, now time.Time) error {
	return saveRecord(ctx, r, record{Type: recordEvent, Run: id, Cluster: cluster, Time: now, Event: &ev})
}

// Close records that run id is closed: its components that never finished
// are missing from then on.
func Close(ctx context.Context, r *repo.Repo, run *Run, now time.Time) error {
	return saveRecord(ctx, r, record{Type: recordClose, Run: run.ID, Cluster: run.Cluster, Time: now})
}

// LoadRuns reads every run record and returns the runs' states as of now,
// oldest first. A record that cannot be read goes to skip and is left out
// when skip is given; otherwise it is an error.
func LoadRuns(ctx context.Context, r *repo.Repo, now time.Time, skip func(repo.ID, error)) ([]*Run, error) {
	recs, err := loadRecords(ctx, r, skip)
	if err != nil {
		return nil, err
	}
	byRun := map[string][]record{}
	for _, fr := range recs {
		byRun[fr.rec.Run] = append(byRun[fr.rec.Run], fr.rec)
	}
	runs := make([]*Run, 0, len(byRun))
	for id, list := range byRun {
		runs = append(runs, merge(id, list, now))
	}
	sort.Slice(runs, func(i, j int) bool {
		if !runs[i].Started.Equal(runs[j].Started) {
			return runs[i].Started.Before(runs[j].Started)
		}
		return runs[i].ID < runs[j].ID
	})
	return runs, nil
}

// fileRecord is a record with the file it was read from.
type fileRecord struct {
	id  repo.ID
	rec record
}

// loadRecords reads every run record; one that cannot be read goes to skip
// when skip is given, and is an error otherwise.
func loadRecords(ctx context.Context, r *repo.Repo, skip func(repo.ID, error)) ([]fileRecord, error) {
	var ids []repo.ID
	if err := r.ListIDs(ctx, repo.RunFile, func(id repo.ID, _ int64) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	recs := make([]fileRecord, len(ids))
	bad := make([]error, len(ids))
	// Records are small: the time goes into round trips, so load several at once.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, id := range ids {
		g.Go(func() error {
			recs[i].id = id
			err := r.LoadJSON(gctx, repo.RunFile, id, &recs[i].rec)
			if err == nil && recs[i].rec.Version != 1 {
				err = fmt.Errorf("run record %s: version %d is not supported", id.Short(), recs[i].rec.Version)
			}
			if err != nil && (skip == nil || gctx.Err() != nil) {
				return err
			}
			bad[i] = err
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []fileRecord
	for i, fr := range recs {
		if bad[i] != nil {
			skip(ids[i], bad[i])
			continue
		}
		out = append(out, fr)
	}
	return out, nil
}

// ErrNoRun means no run matches.
var ErrNoRun = errors.New("no such run")

// FindRun returns the run ref names: "latest" (the newest run of cluster,
// or of any cluster when cluster is empty), a run id, or a unique prefix of
// one (at least 4 characters).
func FindRun(ctx context.Context, r *repo.Repo, ref, cluster string, now time.Time, skip func(repo.ID, error)) (*Run, error) {
	runs, err := LoadRuns(ctx, r, now, skip)
	if err != nil {
		return nil, err
	}
	if ref == "latest" {
		for i := len(runs) - 1; i >= 0; i-- {
			if cluster == "" || runs[i].Cluster == cluster {
				return runs[i], nil
			}
		}
		if cluster != "" {
			return nil, fmt.Errorf("%w: the repository has no run of cluster %s", ErrNoRun, cluster)
		}
		return nil, fmt.Errorf("%w: the repository has no runs", ErrNoRun)
	}
	var found []*Run
	for _, run := range runs {
		if run.ID == ref {
			return run, nil
		}
		if len(ref) >= 4 && strings.HasPrefix(run.ID, ref) {
			found = append(found, run)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: %s", ErrNoRun, ref)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("run id prefix %q is ambiguous: %d runs match", ref, len(found))
}

// phaseRank orders events of the same time: an end beats a start.
func phaseRank(p string) int {
	if p == PhaseRunning {
		return 0
	}
	return 1
}

// merge computes a run's state from its records, as of now.
func merge(id string, recs []record, now time.Time) *Run {
	slices.SortStableFunc(recs, func(a, b record) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		pa, pb := 0, 0
		if a.Event != nil {
			pa = phaseRank(a.Event.Phase)
		}
		if b.Event != nil {
			pb = phaseRank(b.Event.Phase)
		}
		return pa - pb
	})
	run := &Run{ID: id, Timeout: DefaultRunTimeout}
	var closed time.Time
	started := false
	for _, rec := range recs {
		if run.Cluster == "" {
			run.Cluster = rec.Cluster
		}
		switch rec.Type {
		case recordStart:
			if !started {
				// The earliest start sets the run's start and timeout.
				started = true
				run.Started, run.Cluster = rec.Time, rec.Cluster
				if rec.RunTimeoutSeconds > 0 {
					run.Timeout = time.Duration(rec.RunTimeoutSeconds * float64(time.Second))
				}
			}
			for _, e := range rec.Expected {
				if !slices.ContainsFunc(run.Components, func(c ComponentState) bool {
					return c.Name == e.Name && c.Node == e.Node
				}) {
					run.Components = append(run.Components, ComponentState{Name: e.Name, Node: e.Node, Kind: e.Kind, Phase: PhasePending})
				}
			}
		case recordClose:
			if !run.Closed {
				run.Closed, closed = true, rec.Time
			}
		}
	}
	if !started && len(recs) > 0 {
		run.Started = recs[0].Time // the start record is lost: the first one will do
	}
	// Expected components are matched by name and node; one without a node
	// takes the node that reports it.
	anyNode := map[int]bool{}
	for i, c := range run.Components {
		anyNode[i] = c.Node == ""
	}
	for _, rec := range recs {
		ev := rec.Event
		if rec.Type != recordEvent || ev == nil {
			continue
		}
		i := slices.IndexFunc(run.Components, func(c ComponentState) bool {
			return c.Name == ev.Component && c.Node == ev.Node
		})
		if i < 0 {
			i = slices.IndexFunc(run.Components, func(c ComponentState) bool { return c.Name == ev.Component })
			if i >= 0 && !anyNode[i] {
				i = -1
			}
		}
		if i < 0 {
			// Not expected (the reporting process had another config): shown all the same.
			run.Components = append(run.Components, ComponentState{Name: ev.Component, Node: ev.Node})
			i = len(run.Components) - 1
		}
		c := &run.Components[i]
		c.Node, c.Kind, c.Phase = ev.Node, ev.Kind, ev.Phase
		c.SnapshotID, c.Bytes, c.Duration, c.Error = ev.SnapshotID, ev.Bytes, ev.Duration, ev.Error
		c.Updated = rec.Time
	}

	deadline := run.Started.Add(run.Timeout)
	over := run.Closed || now.After(deadline)
	end := deadline
	if run.Closed && closed.Before(deadline) {
		end = closed
	}
	unfinished, allCompleted := false, true
	for i := range run.Components {
		c := &run.Components[i]
		switch c.Phase {
		case PhasePending, PhaseRunning:
			if !over {
				unfinished = true
				continue
			}
			if c.Phase == PhasePending {
				c.Error = "never reported"
			} else {
				c.Error = fmt.Sprintf("started on %s at %s but never finished", c.Node, c.Updated.Format(time.RFC3339))
			}
			c.Phase = PhaseMissing
			if end.After(run.Finished) {
				run.Finished = end
			}
		default:
			if c.Updated.After(run.Finished) {
				run.Finished = c.Updated
			}
		}
		if c.Phase != PhaseCompleted {
			allCompleted = false
		}
	}
	switch {
	case unfinished || len(run.Components) == 0 && !over:
		run.Phase, run.Finished = PhaseRunning, time.Time{}
	case allCompleted && len(run.Components) > 0:
		run.Phase = PhaseCompleted
	default:
		run.Phase = PhaseFailed
		if run.Finished.IsZero() {
			run.Finished = end
		}
	}
	return run
}
