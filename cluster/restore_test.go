package cluster_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/cluster"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/snapshot"
)

func TestRunAsOf(t *testing.T) {
	day := 24 * time.Hour
	runs := []*cluster.Run{ // oldest first, as LoadRuns gives them
		{ID: "mon", Cluster: "prod", Started: t0},
		{ID: "mon-staging", Cluster: "staging", Started: t0.Add(time.Hour)},
		{ID: "tue", Cluster: "prod", Started: t0.Add(day)},
		{ID: "wed", Cluster: "prod", Started: t0.Add(2 * day)},
	}
	for _, tc := range []struct {
		cluster string
		limit   time.Time
		want    string // "" for none
	}{
		{"prod", t0.Add(day + time.Hour), "tue"},
		{"prod", t0.Add(day), "tue"}, // at the time itself
		{"prod", t0.Add(day - time.Nanosecond), "mon"},
		{"prod", t0.Add(3 * time.Hour), "mon"},
		{"", t0.Add(3 * time.Hour), "mon-staging"},
		{"staging", t0.Add(5 * day), "mon-staging"},
		{"prod", t0.Add(5 * day), "wed"},
		{"prod", t0.Add(-time.Second), ""},
		{"test", t0.Add(5 * day), ""},
	} {
		run, err := cluster.RunAsOf(runs, tc.cluster, tc.limit)
		switch {
		case tc.want == "" && !errors.Is(err, cluster.ErrNoRun):
			t.Errorf("cluster %q as of %v: %v, %v; want no run", tc.cluster, tc.limit, run, err)
		case tc.want != "" && (err != nil || run.ID != tc.want):
			t.Errorf("cluster %q as of %v: %v, %v; want %s", tc.cluster, tc.limit, run, err, tc.want)
		}
	}
}

// sampleRun has config from two nodes, a database that completed, a cache
// whose component failed and a queue that never reported.
func sampleRun() *cluster.Run {
	snap := strings.Repeat("ab", 32)
	return &cluster.Run{ID: "r1", Cluster: "prod", Phase: cluster.PhaseFailed, Components: []cluster.ComponentState{
		{Name: "config", Node: "n1", Kind: "files", Phase: cluster.PhaseCompleted, SnapshotID: snap},
		{Name: "config", Node: "n2", Kind: "files", Phase: cluster.PhaseCompleted, SnapshotID: snap},
		{Name: "db", Node: "n2", Kind: "command", Phase: cluster.PhaseCompleted, SnapshotID: snap},
		{Name: "cache", Node: "n1", Kind: "command", Phase: cluster.PhaseFailed, Error: "exit status 3"},
		{Name: "queue", Node: "n3", Kind: "command", Phase: cluster.PhaseMissing, Error: "never reported"},
	}}
}

func TestParts(t *testing.T) {
	run := sampleRun()
	dirs := func(parts []cluster.Part) string {
		var s []string
		for _, p := range parts {
			s = append(s, p.Dir)
		}
		return strings.Join(s, " ")
	}
	parts, err := cluster.Parts(run, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A name held by several nodes gets a directory per node.
	if got, want := dirs(parts), "config/n1 config/n2 db cache queue"; got != want {
		t.Errorf("dirs %q, want %q", got, want)
	}
	for _, p := range parts {
		err := p.Problem()
		if restorable := p.SnapshotID != ""; restorable != (err == nil) {
			t.Errorf("%s: problem %v", p.Dir, err)
		}
	}
	if err := parts[3].Problem(); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("failed component: %v", err)
	}
	if err := parts[4].Problem(); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing component: %v", err)
	}

	// Selecting does not change where a component goes.
	parts, err = cluster.Parts(run, []string{"conf*", "db"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := dirs(parts), "config/n1 config/n2 db"; got != want {
		t.Errorf("selected dirs %q, want %q", got, want)
	}
	if _, err := cluster.Parts(run, []string{"nothing"}); err == nil {
		t.Error("a pattern matching nothing was accepted")
	}
	if _, err := cluster.Parts(run, []string{"[x"}); err == nil {
		t.Error("an invalid pattern was accepted")
	}

	// A name that cannot be a directory is never used as one.
	run.Components[2].Name = "../db"
	parts, _ = cluster.Parts(run, []string{"../db"})
	if len(parts) != 1 || parts[0].Dir != "" || parts[0].Problem() == nil {
		t.Errorf("part named ../db: %+v", parts)
	}
}

const liveConfig = `cluster: prod
components:
  - {name: config, kind: files, node: n1, paths: [/etc/app]}
  - {name: config, kind: files, node: n2, paths: [/etc/app]}
  - {name: db, kind: command, backup: [dump], restore: [load]}
  - {name: cache, kind: command, node: n1, backup: [dump]}
  - {name: acl, kind: mysql, node: n1, dsn: "u:p@tcp(db:3306)/acl"}
`

func TestLiveParts(t *testing.T) {
	cfg := mustParse(t, liveConfig)
	run := sampleRun()
	lps, err := cfg.LiveParts(run, "n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, lp := range lps {
		s := lp.Component.Name + "@" + lp.Part.Node
		if lp.Err != nil {
			s += "!"
		}
		got = append(got, s)
	}
	// n1's components, as a backup on n1 takes them: its config, the db
	// without a node (from wherever it was taken), and its failed cache
	// and acl, which the run does not have.
	if g, want := strings.Join(got, " "), "config@n1 db@n2 cache@n1! acl@!"; g != want {
		t.Errorf("live parts on n1: %s, want %s", g, want)
	}
	if lps[3].Err == nil || !strings.Contains(lps[3].Err.Error(), "no component acl") {
		t.Errorf("acl: %v", lps[3].Err)
	}

	lps, err = cfg.LiveParts(run, "n2", []string{"config"})
	if err != nil || len(lps) != 1 || lps[0].Part.Node != "n2" || lps[0].Err != nil {
		t.Errorf("config on n2: %+v, %v", lps, err)
	}
	if _, err := cfg.LiveParts(run, "n3", []string{"config"}); err == nil {
		t.Error("n3 has no config, yet it was selected")
	}
	run.Cluster = "staging"
	if _, err := cfg.LiveParts(run, "n1", nil); err == nil {
		t.Error("a run of another cluster was accepted")
	}

	// The same component without a node taken on two nodes: this node's.
	run = sampleRun()
	run.Components = append(run.Components, cluster.ComponentState{
		Name: "db", Node: "n1", Kind: "command", Phase: cluster.PhaseCompleted, SnapshotID: strings.Repeat("cd", 32)})
	lps, _ = cfg.LiveParts(run, "n1", []string{"db"})
	if len(lps) != 1 || lps[0].Part.Node != "n1" || lps[0].Err != nil {
		t.Errorf("db taken on two nodes, restored on n1: %+v", lps)
	}
	lps, _ = cfg.LiveParts(run, "n3", []string{"db"})
	if len(lps) != 1 || lps[0].Err == nil {
		t.Errorf("db taken on two nodes, restored on n3: %+v", lps)
	}

	// A kind that changed since the backup is not fed to the wrong restore.
	run = sampleRun()
	run.Components[2].Kind = "postgres"
	lps, _ = cfg.LiveParts(run, "n2", []string{"db"})
	if len(lps) != 1 || lps[0].Err == nil || !strings.Contains(lps[0].Err.Error(), "kind") {
		t.Errorf("db of another kind: %+v", lps)
	}
}

func TestOverridesCheck(t *testing.T) {
	cfg := mustParse(t, `cluster: prod
components:
  - {name: main, kind: postgres, dsn: "postgres://db/main"}
  - {name: acl, kind: mysql, dsn: "u@tcp(db)/acl"}
  - {name: meta, kind: etcd, endpoints: [http://e:2379]}
`)
	comps := []*cluster.Component{&cfg.Components[0], &cfg.Components[1], &cfg.Components[2]}
	dsn := cluster.Overrides{DSN: "postgres://new/main"}
	if err := dsn.Check(comps); err == nil || !strings.Contains(err.Error(), "main, acl") {
		t.Errorf("one DSN for two databases: %v", err)
	}
	if err := dsn.Check(comps[:1]); err != nil {
		t.Errorf("one DSN for one database: %v", err)
	}
	if err := (cluster.Overrides{DataDir: "/var/lib/etcd"}).Check(comps); err != nil {
		t.Errorf("one data dir for one etcd: %v", err)
	}
	if err := (cluster.Overrides{Bucket: "b"}).Check(comps); err == nil {
		t.Error("a bucket with no s3 component was accepted")
	}
	if err := (cluster.Overrides{}).Check(comps); err != nil {
		t.Errorf("no overrides: %v", err)
	}
}

func TestLiveTarget(t *testing.T) {
	cfg := mustParse(t, `cluster: prod
components:
  - {name: main, kind: postgres, dsn: "postgres://db/main"}
  - {name: copy, kind: postgres, dsn: "postgres://db/main", restore: {dsn: "postgres://spare/main"}}
  - name: meta
    kind: etcd
    endpoints: [http://e:2379]
    restore: {data_dir: /var/lib/etcd, name: m1, initial_cluster_token: tok}
  - {name: nodir, kind: etcd, endpoints: [http://e:2379]}
  - {name: rdb, kind: redis, address: "r:6379", restore: {data_dir: /var/lib/redis}}
  - {name: grid, kind: command, backup: [dump]}
`)
	c := cfg.Components
	target := func(i int, o cluster.Overrides) string {
		tg, err := c[i].LiveTarget(o, false)
		if err != nil {
			return "error"
		}
		return tg.DSN + "|" + tg.DataDir + "|" + tg.Address
	}
	for _, tc := range []struct {
		i    int
		o    cluster.Overrides
		want string
	}{
		{0, cluster.Overrides{}, "postgres://db/main||"}, // back where it came from
		{1, cluster.Overrides{}, "postgres://spare/main||"},
		{1, cluster.Overrides{DSN: "postgres://new/x"}, "postgres://new/x||"},
		{2, cluster.Overrides{}, "|/var/lib/etcd|"},
		{2, cluster.Overrides{DataDir: "/tmp/e"}, "|/tmp/e|"},
		{3, cluster.Overrides{}, "error"}, // no data dir anywhere
		{4, cluster.Overrides{}, "|/var/lib/redis|r:6379"},
		{4, cluster.Overrides{Address: "s:6380"}, "|/var/lib/redis|s:6380"},
		{5, cluster.Overrides{}, "error"}, // no restore command
	} {
		if got := target(tc.i, tc.o); got != tc.want {
			t.Errorf("%s with %+v: %s, want %s", c[tc.i].Name, tc.o, got, tc.want)
		}
	}
	tg, _ := c[2].LiveTarget(cluster.Overrides{}, true)
	if tg.Name != "m1" || tg.ClusterToken != "tok" || !tg.Overwrite {
		t.Errorf("etcd member settings: %+v", tg)
	}
}

// newStore returns an empty repository's store.
func newStore(t *testing.T) *pack.Store {
	t.Helper()
	r := newRepo(t)
	idx, err := index.Load(context.Background(), r, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idx.Close() })
	return pack.NewStore(r, idx)
}

// backupOne backs up the component of cfg named name and returns its snapshot.
func backupOne(t *testing.T, store *pack.Store, cfg *cluster.Config, name string) *snapshot.Snapshot {
	t.Helper()
	comps, err := cfg.Select("n1", []string{name})
	if err != nil {
		t.Fatal(err)
	}
	res, err := cluster.Backup(context.Background(), store, cluster.BackupOptions{Config: cfg, Components: comps, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if cr := res.Components[0]; cr.Err != nil || cr.Snapshot == nil {
		t.Fatalf("backup of %s: %v", name, cr.Err)
	}
	return res.Components[0].Snapshot
}

func write(t *testing.T, name, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func content(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return string(b)
}

func TestRestoreFilesLive(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	live := t.TempDir()
	dir := filepath.Join(live, "etc-app")
	single := filepath.Join(live, "single.conf")
	odd := filepath.Join(live, "odd[1]*.conf") // a name that is also a pattern
	lookalike := filepath.Join(live, "odd1x.conf")
	write(t, filepath.Join(dir, "app.conf"), "v1\n")
	write(t, filepath.Join(dir, "sub", "users"), "alice\n")
	write(t, single, "single v1\n")
	write(t, odd, "odd v1\n")
	write(t, lookalike, "not in the snapshot\n")
	write(t, filepath.Join(live, "bystander"), "not in the snapshot\n")
	cfg := mustParse(t, "cluster: prod\ncomponents:\n  - name: config\n    kind: files\n    paths: ['"+
		dir+"', '"+single+"', '"+odd+"']\n")
	sn := backupOne(t, store, cfg, "config")
	comp := &cfg.Components[0]

	write(t, filepath.Join(dir, "app.conf"), "v2\n")
	write(t, filepath.Join(dir, "extra"), "added\n")
	write(t, single, "single v2\n")
	write(t, odd, "odd v2\n")

	// The paths are not empty: nothing is written without an overwrite policy.
	_, err := cluster.RestoreLive(ctx, store, comp, sn, cluster.LiveOptions{})
	if !errors.Is(err, cluster.ErrNotEmpty) {
		t.Fatalf("restore over existing paths: %v", err)
	}
	if got := content(t, single); got != "single v2\n" {
		t.Errorf("a refused restore changed %s: %q", single, got)
	}

	st, err := cluster.RestoreLive(ctx, store, comp, sn, cluster.LiveOptions{Overwrite: snapshot.OverwriteAlways, Delete: true})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		filepath.Join(dir, "app.conf"):     "v1\n",
		filepath.Join(dir, "sub", "users"): "alice\n",
		single:                             "single v1\n",
		odd:                                "odd v1\n",
		lookalike:                          "not in the snapshot\n",
		filepath.Join(live, "bystander"):   "not in the snapshot\n",
	} {
		if got := content(t, name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "extra")); err == nil {
		t.Error("--delete left a file below the path that the snapshot lacks")
	}
	if st.Files != 4 || st.Deleted != 1 {
		t.Errorf("stats: %+v", st)
	}

	// On a machine without the paths, no policy is needed.
	for _, p := range []string{dir, single, odd} {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cluster.RestoreLive(ctx, store, comp, sn, cluster.LiveOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := content(t, filepath.Join(dir, "sub", "users")) + content(t, odd); got != "alice\nodd v1\n" {
		t.Errorf("restored into new paths: %q", got)
	}
}

func TestRestoreCommandLive(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	out := filepath.Join(t.TempDir(), "imported")
	cfg := mustParse(t, `cluster: prod
components:
  - {name: grid, kind: command, backup: ["sh", "-c", "seq 1 20000"], restore: ["sh", "-c", "cat > `+out+`"]}
  - {name: broken, kind: command, backup: ["echo", "x"], restore: ["sh", "-c", "cat >/dev/null; echo cannot import >&2; exit 4"]}
`)
	sn := backupOne(t, store, cfg, "grid")
	st, err := cluster.RestoreLive(ctx, store, &cfg.Components[0], sn, cluster.LiveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := 1; i <= 20000; i++ {
		want.WriteString(strconv.Itoa(i) + "\n")
	}
	if got := content(t, out); got != want.String() {
		t.Errorf("the restore command read %d bytes, want %d", len(got), want.Len())
	}
	if st.Bytes != int64(want.Len()) {
		t.Errorf("stats: %+v", st)
	}

	sn = backupOne(t, store, cfg, "broken")
	_, err = cluster.RestoreLive(ctx, store, &cfg.Components[1], sn, cluster.LiveOptions{})
	if err == nil || !strings.Contains(err.Error(), "cannot import") {
		t.Errorf("a failing restore command: %v", err)
	}
}
