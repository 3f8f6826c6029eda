package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/cluster"
	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
)

func newRepo(t *testing.T) *repo.Repo {
	t.Helper()
	r, err := repo.Init(context.Background(), mem.New(), []byte("pw"),
		repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustParse(t *testing.T, src string) *cluster.Config {
	t.Helper()
	c, err := cluster.Parse([]byte(src), "cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// threeParts expects config on n1 and n2 and a database on any node.
const threeParts = `cluster: prod
run_timeout: 1h
components:
  - {name: config, kind: files, node: n1, paths: [/etc/app]}
  - {name: config, kind: files, node: n2, paths: [/etc/app]}
  - {name: db, kind: command, backup: [dump]}
`

var t0 = time.Date(2026, 11, 22, 2, 0, 0, 0, time.UTC)

func at(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }

func loadRun(t *testing.T, r *repo.Repo, id string, now time.Time) *cluster.Run {
	t.Helper()
	run, err := cluster.FindRun(context.Background(), r, id, "", now, nil)
	if err != nil {
		t.Fatal(err)
	}
	return run
}

// phases returns "name@node=phase" for each component, in order.
func phases(run *cluster.Run) string {
	var s []string
	for _, c := range run.Components {
		s = append(s, fmt.Sprintf("%s@%s=%s", c.Name, c.Node, c.Phase))
	}
	return strings.Join(s, " ")
}

func report(t *testing.T, r *repo.Repo, id, comp, node, phase string, when time.Time) {
	t.Helper()
	ev := cluster.Event{Component: comp, Node: node, Kind: "files", Phase: phase}
	if phase == cluster.PhaseCompleted {
		ev.SnapshotID = strings.Repeat("ab", 32)
		ev.Bytes = 1234
	}
	if phase == cluster.PhaseFailed {
		ev.Error = "exit status 3"
	}
	if err := cluster.Report(context.Background(), r, id, "prod", ev, when); err != nil {
		t.Fatal(err)
	}
}

func TestRunMerge(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	cfg := mustParse(t, threeParts)
	const id = "run-1"
	if err := cluster.Join(ctx, r, id, cfg, at(0)); err != nil {
		t.Fatal(err)
	}
	run := loadRun(t, r, id, at(1))
	if run.Phase != cluster.PhaseRunning || run.Cluster != "prod" || !run.Started.Equal(at(0)) || run.Timeout != time.Hour {
		t.Errorf("new run: %+v", run)
	}
	if got, want := phases(run), "config@n1=pending config@n2=pending db@=pending"; got != want {
		t.Errorf("new run: %s, want %s", got, want)
	}

	report(t, r, id, "config", "n1", cluster.PhaseRunning, at(1))
	report(t, r, id, "db", "n2", cluster.PhaseRunning, at(2))
	report(t, r, id, "config", "n1", cluster.PhaseCompleted, at(3))
	run = loadRun(t, r, id, at(4))
	if got, want := phases(run), "config@n1=completed config@n2=pending db@n2=running"; got != want {
		t.Errorf("under way: %s, want %s", got, want)
	}
	if run.Phase != cluster.PhaseRunning || !run.Finished.IsZero() {
		t.Errorf("under way: phase %s, finished %v", run.Phase, run.Finished)
	}
	c := run.Components[0]
	if c.SnapshotID != strings.Repeat("ab", 32) || c.Bytes != 1234 || !c.Updated.Equal(at(3)) {
		t.Errorf("completed component: %+v", c)
	}

	// The latest event wins, whatever order the records are listed in:
	// db failed, then a retry completed it.
	report(t, r, id, "db", "n2", cluster.PhaseFailed, at(5))
	report(t, r, id, "config", "n2", cluster.PhaseRunning, at(6))
	report(t, r, id, "db", "n2", cluster.PhaseCompleted, at(7))
	report(t, r, id, "config", "n2", cluster.PhaseCompleted, at(8))
	run = loadRun(t, r, id, at(9))
	if got, want := phases(run), "config@n1=completed config@n2=completed db@n2=completed"; got != want {
		t.Errorf("done: %s, want %s", got, want)
	}
	if run.Phase != cluster.PhaseCompleted || !run.Finished.Equal(at(8)) {
		t.Errorf("done: phase %s, finished %v (want %v)", run.Phase, run.Finished, at(8))
	}
}

func TestRunFailedComponent(t *testing.T) {
	r := newRepo(t)
	const id = "run-f"
	if err := cluster.Join(context.Background(), r, id, mustParse(t, threeParts), at(0)); err != nil {
		t.Fatal(err)
	}
	report(t, r, id, "config", "n1", cluster.PhaseCompleted, at(1))
	report(t, r, id, "config", "n2", cluster.PhaseCompleted, at(1))
	report(t, r, id, "db", "n1", cluster.PhaseFailed, at(2))
	run := loadRun(t, r, id, at(3))
	if run.Phase != cluster.PhaseFailed || !run.Finished.Equal(at(2)) {
		t.Errorf("phase %s, finished %v", run.Phase, run.Finished)
	}
	if c := run.Components[2]; c.Phase != cluster.PhaseFailed || c.Error != "exit status 3" || c.Node != "n1" {
		t.Errorf("failed component: %+v", c)
	}
}

func TestRunMissing(t *testing.T) {
	ctx := context.Background()
	for _, how := range []string{"timeout", "close"} {
		t.Run(how, func(t *testing.T) {
			r := newRepo(t)
			const id = "run-m"
			if err := cluster.Join(ctx, r, id, mustParse(t, threeParts), at(0)); err != nil {
				t.Fatal(err)
			}
			report(t, r, id, "config", "n1", cluster.PhaseCompleted, at(1))
			report(t, r, id, "db", "n1", cluster.PhaseRunning, at(2))
			// Before the timeout, nothing is missing yet.
			if run := loadRun(t, r, id, at(59)); run.Phase != cluster.PhaseRunning {
				t.Fatalf("before the timeout: %s", phases(run))
			}
			now, end := at(61), at(60)
			if how == "close" {
				run := loadRun(t, r, id, at(10))
				if err := cluster.Close(ctx, r, run, at(10)); err != nil {
					t.Fatal(err)
				}
				now, end = at(11), at(10)
			}
			run := loadRun(t, r, id, now)
			if got, want := phases(run), "config@n1=completed config@n2=missing db@n1=missing"; got != want {
				t.Errorf("%s, want %s", got, want)
			}
			if run.Phase != cluster.PhaseFailed || !run.Finished.Equal(end) || run.Closed != (how == "close") {
				t.Errorf("phase %s, finished %v (want %v), closed %v", run.Phase, run.Finished, end, run.Closed)
			}
			if e := run.Components[1].Error; e != "never reported" {
				t.Errorf("pending component's error %q", e)
			}
			if e := run.Components[2].Error; !strings.Contains(e, "never finished") {
				t.Errorf("running component's error %q", e)
			}
		})
	}
}

// Several processes add to one run at once, each creating it if it does
// not exist yet: every component they report is in the merged run.
func TestRunConcurrentProcesses(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	src := "cluster: prod\ncomponents:\n"
	for i := range 10 {
		src += fmt.Sprintf("  - {name: a%d, kind: command, backup: [x], node: n1}\n  - {name: b%d, kind: command, backup: [x], node: n2}\n", i, i)
	}
	cfg := mustParse(t, src)
	const id = "shared"
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for p, node := range []string{"n1", "n2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cluster.Join(ctx, r, id, cfg, at(p)); err != nil {
				errs <- err
				return
			}
			prefix := map[string]string{"n1": "a", "n2": "b"}[node]
			for i := range 10 {
				for j, phase := range []string{cluster.PhaseRunning, cluster.PhaseCompleted} {
					ev := cluster.Event{Component: fmt.Sprintf("%s%d", prefix, i), Node: node, Kind: "command", Phase: phase}
					if err := cluster.Report(ctx, r, id, "prod", ev, at(2+2*i+j)); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	runs, err := cluster.LoadRuns(ctx, r, at(30), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 1 {
		t.Fatalf("%d runs, want 1", len(runs))
	}
	run := runs[0]
	if run.Phase != cluster.PhaseCompleted || len(run.Components) != 20 || !run.Started.Equal(at(0)) {
		t.Errorf("merged run: phase %s, started %v, %s", run.Phase, run.Started, phases(run))
	}
	for _, c := range run.Components {
		if c.Phase != cluster.PhaseCompleted {
			t.Errorf("%s@%s: %s", c.Name, c.Node, c.Phase)
		}
	}
}

func TestFindRun(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	cfg := mustParse(t, threeParts)
	other := mustParse(t, strings.Replace(threeParts, "cluster: prod", "cluster: test", 1))
	ids := []string{cluster.NewRunID(), cluster.NewRunID(), cluster.NewRunID()}
	for i, c := range []*cluster.Config{cfg, cfg, other} {
		if err := cluster.Join(ctx, r, ids[i], c, at(i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := loadRun(t, r, "latest", at(5)); got.ID != ids[2] {
		t.Errorf("latest is %s, want %s", got.ID, ids[2])
	}
	if got, err := cluster.FindRun(ctx, r, "latest", "prod", at(5), nil); err != nil || got.ID != ids[1] {
		t.Errorf("latest of prod: %v %v", got, err)
	}
	if got := loadRun(t, r, ids[0][:8], at(5)); got.ID != ids[0] {
		t.Errorf("prefix found %s", got.ID)
	}
	if _, err := cluster.FindRun(ctx, r, "0000-nothing", "", at(5), nil); !errors.Is(err, cluster.ErrNoRun) {
		t.Errorf("unknown run: %v", err)
	}
	if _, err := cluster.FindRun(ctx, newRepo(t), "latest", "", at(5), nil); !errors.Is(err, cluster.ErrNoRun) {
		t.Errorf("no runs: %v", err)
	}
	// Joining a run of another cluster is refused.
	if err := cluster.Join(ctx, r, ids[2], cfg, at(6)); err == nil || !strings.Contains(err.Error(), "cluster test") {
		t.Errorf("join a run of another cluster: %v", err)
	}
	if err := cluster.Join(ctx, r, "a b", cfg, at(6)); err == nil {
		t.Error("run id with a space accepted")
	}
	if id := cluster.NewRunID(); len(id) != 36 || id[14] != '4' || cluster.CheckRunID(id) != nil {
		t.Errorf("NewRunID %q is not a version 4 UUID", id)
	}
}

// Records are encrypted in the repository: nothing of a run is readable
// without the key.
func TestRunRecordsEncrypted(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	r, err := repo.Init(ctx, be, []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Join(ctx, r, "visible-run-id", mustParse(t, threeParts), at(0)); err != nil {
		t.Fatal(err)
	}
	n := 0
	err = be.List(ctx, repo.RunFile, func(fi repo.FileInfo) error {
		n++
		data, err := repo.ReadAll(ctx, be, repo.Handle{Type: repo.RunFile, Name: fi.Name})
		if err != nil {
			return err
		}
		if strings.Contains(string(data), "visible-run-id") || strings.Contains(string(data), "prod") {
			t.Errorf("run record %s is readable", fi.Name)
		}
		return nil
	})
	if err != nil || n != 1 {
		t.Fatalf("%d run records, %v", n, err)
	}
}
