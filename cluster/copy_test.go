package cluster_test

import (
	"context"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/cluster"
	"github.com/cairn-backup/cairn/repo"
)

// TestCopyRuns copies a run's records with the snapshot ids mapped, leaves
// out the event of a snapshot without a copy, stores nothing twice and
// refuses to merge a run into another cluster's run of the same id.
func TestCopyRuns(t *testing.T) {
	ctx := context.Background()
	src, dst := newRepo(t), newRepo(t)
	cfg := mustParse(t, threeParts)
	if err := cluster.Join(ctx, src, "nightly", cfg, at(0)); err != nil {
		t.Fatal(err)
	}
	snap := map[string]string{"n1": strings.Repeat("11", 32), "n2": strings.Repeat("22", 32)}
	for _, node := range []string{"n1", "n2"} {
		ev := cluster.Event{Component: "config", Node: node, Kind: "files", Phase: cluster.PhaseCompleted, SnapshotID: snap[node]}
		if err := cluster.Report(ctx, src, "nightly", "prod", ev, at(1)); err != nil {
			t.Fatal(err)
		}
	}
	copyOf := func(id string) (string, bool) {
		if id == snap["n1"] {
			return strings.Repeat("33", 32), true
		}
		return "", false // n2's snapshot was not copied
	}
	fail := func(id repo.ID, err error) { t.Errorf("record %s: %v", id, err) }
	n, err := cluster.CopyRuns(ctx, src, dst, []string{"nightly", ""}, copyOf, fail)
	if err != nil || n != 2 {
		t.Fatalf("CopyRuns = %d, %v; want the start record and one event", n, err)
	}
	run := loadRun(t, dst, "nightly", at(2))
	if got := phases(run); got != "config@n1=completed config@n2=pending db@=pending" {
		t.Errorf("the copied run: %s", got)
	}
	if run.Components[0].SnapshotID != strings.Repeat("33", 32) {
		t.Errorf("the copied event names %s, not the copy", run.Components[0].SnapshotID)
	}
	if n, err := cluster.CopyRuns(ctx, src, dst, []string{"nightly"}, copyOf, fail); err != nil || n != 0 {
		t.Errorf("a second copy stored %d records, %v", n, err)
	}

	other := newRepo(t)
	if err := cluster.Join(ctx, other, "nightly", mustParse(t, strings.Replace(threeParts, "cluster: prod", "cluster: staging", 1)), at(0)); err != nil {
		t.Fatal(err)
	}
	_, err = cluster.CopyRuns(ctx, src, other, []string{"nightly"}, copyOf, fail)
	if err == nil || !strings.Contains(err.Error(), "staging") {
		t.Errorf("copying into another cluster's run of the same id: %v", err)
	}
}
