package cluster_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/cluster"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
)

// snapID is a made-up snapshot id.
func snapID(n int) string { return fmt.Sprintf("%064x", n) }

// pastRun records a run of cluster that started at start, with one
// component per entry of snaps: a snapshot id, or "" for a component that
// failed.
func pastRun(t *testing.T, r *repo.Repo, id, clusterName string, start time.Time, snaps ...string) {
	t.Helper()
	ctx := context.Background()
	cfg := mustParse(t, "cluster: "+clusterName+"\nrun_timeout: 1h\ncomponents:\n  - {name: db, kind: command, backup: [dump]}\n")
	if err := cluster.Join(ctx, r, id, cfg, start); err != nil {
		t.Fatal(err)
	}
	for i, s := range snaps {
		ev := cluster.Event{Component: "db", Node: fmt.Sprintf("n%d", i), Kind: "command", Phase: cluster.PhaseCompleted, SnapshotID: s}
		if s == "" {
			ev.Phase, ev.Error = cluster.PhaseFailed, "exit status 1"
		}
		if err := cluster.Report(ctx, r, id, clusterName, ev, start.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestUnreferencedRuns(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	day := 24 * time.Hour
	now := t0.Add(10 * day)
	pastRun(t, r, "forgotten", "prod", t0, snapID(1), snapID(2))
	pastRun(t, r, "kept", "prod", t0.Add(day), snapID(3), snapID(4))
	pastRun(t, r, "half-kept", "prod", t0.Add(2*day), snapID(5), snapID(6))
	pastRun(t, r, "old-failure", "prod", t0.Add(-day), "")
	pastRun(t, r, "recent-failure", "prod", t0.Add(3*day), "")
	pastRun(t, r, "other-cluster", "staging", t0, snapID(7))
	pastRun(t, r, "under-way", "prod", now.Add(-time.Minute)) // nothing reported yet
	// A snapshot that names its run keeps it, even if the run's record of
	// it was lost.
	pastRun(t, r, "named", "prod", t0.Add(4*day), "")

	left := []*snapshot.Snapshot{}
	for _, sn := range []struct {
		id       int
		run      string
		at       time.Time
		clusterN string
	}{
		{3, "kept", t0.Add(day), "prod"},
		{4, "kept", t0.Add(day), "prod"},
		{6, "half-kept", t0.Add(2 * day), "prod"},
		{8, "named", t0.Add(4 * day), "prod"},
	} {
		id, err := repo.ParseID(snapID(sn.id))
		if err != nil {
			t.Fatal(err)
		}
		left = append(left, &snapshot.Snapshot{ID: id, Run: sn.run, Time: sn.at, Cluster: sn.clusterN, Component: "db"})
	}

	runs, err := cluster.Unreferenced(ctx, r, "prod", left, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, rr := range runs {
		ids = append(ids, rr.Run.ID)
		// Every record goes, the start record last: a removal cut short
		// leaves a run that is still found, and removed next time.
		want := map[string]int{"forgotten": 3, "old-failure": 2}[rr.Run.ID]
		if len(rr.Files) != want {
			t.Errorf("run %s: %d record files, want %d", rr.Run.ID, len(rr.Files), want)
			continue
		}
		for i, id := range rr.Files {
			var rec struct {
				Type string `json:"type"`
			}
			if err := r.LoadJSON(ctx, repo.RunFile, id, &rec); err != nil {
				t.Fatal(err)
			}
			if (rec.Type == "start") != (i == len(rr.Files)-1) {
				t.Errorf("run %s: record %d of %d is a %s record", rr.Run.ID, i+1, len(rr.Files), rec.Type)
			}
		}
	}
	// The failure that is older than every snapshot left goes; the recent
	// one stays on record.
	if got, want := strings.Join(ids, " "), "old-failure forgotten"; got != want {
		t.Fatalf("unreferenced runs: %s, want %s", got, want)
	}

	for _, rr := range runs {
		if err := cluster.RemoveRecords(ctx, r, rr); err != nil {
			t.Fatal(err)
		}
	}
	all, err := cluster.LoadRuns(ctx, r, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids = nil
	for _, run := range all {
		ids = append(ids, run.ID)
	}
	if got, want := strings.Join(ids, " "), "other-cluster kept half-kept recent-failure named under-way"; got != want {
		t.Errorf("runs after removal: %s, want %s", got, want)
	}
	for _, id := range []string{"forgotten", "old-failure"} {
		if _, err := cluster.FindRun(ctx, r, id, "", now, nil); err == nil {
			t.Errorf("run %s is still found", id)
		}
	}

	// With no snapshot of the cluster left, every finished run goes.
	runs, err = cluster.Unreferenced(ctx, r, "prod", nil, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids = nil
	for _, rr := range runs {
		ids = append(ids, rr.Run.ID)
	}
	if got, want := strings.Join(ids, " "), "kept half-kept recent-failure named"; got != want {
		t.Errorf("with nothing left: %s, want %s", got, want)
	}
}
