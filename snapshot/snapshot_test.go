package snapshot_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/crypto"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/mem"
	"github.com/cairn-backup/cairn/snapshot"
)

func memRepo(t *testing.T) *repo.Repo {
	t.Helper()
	r, err := repo.Init(context.Background(), mem.New(), []byte("pw"), repo.InitOptions{KDF: crypto.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func sampleSnapshot() *snapshot.Snapshot {
	parent := repo.ID{9, 8, 7}
	return &snapshot.Snapshot{
		Version: 1, Time: time.Date(2026, 11, 22, 18, 0, 0, 5, time.UTC), Tree: repo.ID{1, 2},
		Paths: []string{"/data/x", "/etc"}, Hostname: "n1", Username: "root", UID: 0, GID: 0,
		Tags: []string{"daily", "db"}, Excludes: []string{"*.tmp"},
		Cluster: "prod", Component: "etcd", Run: "run-1", Parent: &parent, ProgramVersion: "cairn 0.1",
		Summary: &snapshot.Summary{FilesNew: 3, DataAdded: 1 << 30, DurationSeconds: 1.5},
	}
}

func TestDecodeSnapshot(t *testing.T) {
	sn := sampleSnapshot()
	b, err := json.Marshal(sn)
	if err != nil {
		t.Fatal(err)
	}
	got, err := snapshot.DecodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(sn.Time) {
		t.Fatalf("time %v, want %v", got.Time, sn.Time)
	}
	got.Time = sn.Time
	if !reflect.DeepEqual(got, sn) {
		t.Fatalf("decoded %+v\nwant %+v", got, sn)
	}

	cases := map[string]string{
		"version 0":    strings.Replace(string(b), `"version":1`, `"version":0`, 1),
		"version 2":    strings.Replace(string(b), `"version":1`, `"version":2`, 1),
		"no version":   strings.Replace(string(b), `"version":1,`, ``, 1),
		"bad tree":     strings.Replace(string(b), `"tree":"`, `"tree":"x`, 1),
		"bad time":     strings.Replace(string(b), `"time":"2026`, `"time":"20266`, 1),
		"paths string": strings.Replace(string(b), `"paths":[`, `"paths":"x","p":[`, 1),
		"truncated":    string(b[:len(b)-1]),
		"empty":        ``,
		"null":         `null`,
	}
	for name, s := range cases {
		if s == string(b) {
			t.Fatalf("%s: the edit did not apply", name)
		}
		if sn, err := snapshot.DecodeSnapshot([]byte(s)); err == nil {
			t.Errorf("%s: accepted %+v", name, sn)
		}
	}
}

// TestSnapshotJSONNames pins the field names of docs/format.md.
func TestSnapshotJSONNames(t *testing.T) {
	b, err := json.Marshal(sampleSnapshot())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "time", "tree", "paths", "hostname", "username", "uid", "gid", "tags",
		"excludes", "cluster", "component", "run", "parent", "program_version", "summary"} {
		if _, ok := m[k]; !ok {
			t.Errorf("field %q missing", k)
		}
		delete(m, k)
	}
	for k := range m {
		t.Errorf("undocumented field %q", k)
	}
}

func TestSaveLoadList(t *testing.T) {
	ctx := context.Background()
	r := memRepo(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var ids []repo.ID
	// Saved out of time order; two share a time.
	for _, h := range []int{5, 1, 3, 3, 2} {
		sn := sampleSnapshot()
		sn.Version = 0 // Save sets it
		sn.Time = base.Add(time.Duration(h) * time.Hour)
		sn.Hostname = "host" + string(rune('0'+h))
		id, err := snapshot.Save(ctx, r, sn)
		if err != nil {
			t.Fatal(err)
		}
		if sn.ID != id || sn.Version != 1 {
			t.Fatalf("Save left ID %s, version %d", sn.ID.Short(), sn.Version)
		}
		ids = append(ids, id)
	}
	sn, err := snapshot.Load(ctx, r, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if sn.ID != ids[0] || sn.Hostname != "host5" || !reflect.DeepEqual(sn.Paths, []string{"/data/x", "/etc"}) {
		t.Fatalf("loaded %+v", sn)
	}
	list, err := snapshot.List(ctx, r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 5 {
		t.Fatalf("List gave %d snapshots", len(list))
	}
	for i := 1; i < len(list); i++ {
		a, b := list[i-1], list[i]
		if a.Time.After(b.Time) || a.Time.Equal(b.Time) && a.ID.String() > b.ID.String() {
			t.Fatalf("List not oldest first: %s then %s", a.Time, b.Time)
		}
	}
	if _, err := snapshot.Load(ctx, r, repo.ID{1}); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("missing snapshot: %v, want ErrNotFound", err)
	}
	// A snapshot of a format this code does not know.
	future, err := r.SaveJSON(ctx, repo.SnapshotFile, map[string]any{"version": 2, "time": base})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snapshot.Load(ctx, r, future); err == nil {
		t.Fatal("loaded a version 2 snapshot")
	}
	if _, err := snapshot.List(ctx, r, nil); err == nil {
		t.Fatal("List skipped a snapshot it cannot read")
	}
	var skipped []repo.ID
	list, err = snapshot.List(ctx, r, func(id repo.ID, err error) { skipped = append(skipped, id) })
	if err != nil || len(skipped) != 1 || skipped[0] != future {
		t.Fatalf("List with skip: %v, skipped %v, want only %s", err, skipped, future.Short())
	}
	for _, sn := range list {
		if sn.ID == future {
			t.Fatal("List with skip kept the unreadable snapshot")
		}
	}
}

func TestFilterMatch(t *testing.T) {
	sn := sampleSnapshot() // n1, tags daily+db, paths /data/x and /etc, prod/etcd/run-1
	cases := []struct {
		name string
		f    snapshot.Filter
		want bool
	}{
		{"empty", snapshot.Filter{}, true},
		{"host", snapshot.Filter{Hosts: []string{"n2", "n1"}}, true},
		{"other host", snapshot.Filter{Hosts: []string{"n2"}}, false},
		{"one tag", snapshot.Filter{Tags: []string{"db"}}, true},
		{"both tags", snapshot.Filter{Tags: []string{"db,daily"}}, true},
		{"tag group missing one", snapshot.Filter{Tags: []string{"db,weekly"}}, false},
		{"alternative groups", snapshot.Filter{Tags: []string{"weekly", "daily"}}, true},
		{"no group matches", snapshot.Filter{Tags: []string{"weekly", "db,hourly"}}, false},
		{"path", snapshot.Filter{Paths: []string{"/etc"}}, true},
		{"all paths", snapshot.Filter{Paths: []string{"/etc", "/data/x"}}, true},
		{"missing path", snapshot.Filter{Paths: []string{"/etc", "/data"}}, false},
		{"cluster", snapshot.Filter{Cluster: "prod"}, true},
		{"other cluster", snapshot.Filter{Cluster: "staging"}, false},
		{"component glob", snapshot.Filter{Component: "et*"}, true},
		{"component exact", snapshot.Filter{Component: "etcd"}, true},
		{"component glob misses", snapshot.Filter{Component: "pg*"}, false},
		{"run", snapshot.Filter{Run: "run-1"}, true},
		{"other run", snapshot.Filter{Run: "run-2"}, false},
		{"all at once", snapshot.Filter{Hosts: []string{"n1"}, Tags: []string{"db"}, Paths: []string{"/etc"}, Cluster: "prod", Component: "*", Run: "run-1"}, true},
	}
	for _, tc := range cases {
		if got := tc.f.Match(sn); got != tc.want {
			t.Errorf("%s: Match = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFind(t *testing.T) {
	ctx := context.Background()
	r := memRepo(t)
	if _, err := snapshot.Find(ctx, r, "latest", snapshot.Filter{}, nil); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("latest of none: %v, want ErrNotFound", err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	byHost := map[string]repo.ID{}
	for i, host := range []string{"a", "b", "a2"} {
		sn := sampleSnapshot()
		sn.Time = base.Add(time.Duration(i) * time.Minute)
		sn.Hostname = host
		id, err := snapshot.Save(ctx, r, sn)
		if err != nil {
			t.Fatal(err)
		}
		byHost[host] = id
	}
	cases := []struct {
		ref  string
		f    snapshot.Filter
		want string
	}{
		{"latest", snapshot.Filter{}, "a2"},
		{"latest", snapshot.Filter{Hosts: []string{"a", "b"}}, "b"},
		{"latest", snapshot.Filter{Hosts: []string{"a"}}, "a"},
		{byHost["b"].String()[:8], snapshot.Filter{}, "b"},
		{byHost["a"].String(), snapshot.Filter{}, "a"},
	}
	for _, tc := range cases {
		sn, err := snapshot.Find(ctx, r, tc.ref, tc.f, nil)
		if err != nil || sn.ID != byHost[tc.want] {
			t.Errorf("Find(%q, %+v): %v, %v; want the one of host %s", tc.ref, tc.f, sn, err, tc.want)
		}
	}
	if _, err := snapshot.Find(ctx, r, "latest", snapshot.Filter{Hosts: []string{"z"}}, nil); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("latest with no match: %v, want ErrNotFound", err)
	}
}

func FuzzDecodeSnapshot(f *testing.F) {
	b, err := json.Marshal(sampleSnapshot())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	for n := 0; n < len(b); n += 17 {
		f.Add(b[:n])
	}
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"parent":null,"summary":null,"paths":null}`))
	f.Add([]byte(`{"version":1,"time":"0000-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"version":1,"time":"2026-01-01T00:00:00+23:59"}`))
	f.Add([]byte(`{"Version":1,"VERSION":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sn, err := snapshot.DecodeSnapshot(b)
		if err != nil {
			return
		}
		if sn.Version != 1 {
			t.Fatalf("accepted version %d", sn.Version)
		}
		enc, err := json.Marshal(sn)
		if err != nil {
			t.Fatalf("accepted snapshot does not encode: %v", err)
		}
		back, err := snapshot.DecodeSnapshot(enc)
		if err != nil {
			t.Fatalf("encoded snapshot rejected: %v\n%s", err, enc)
		}
		again, err := json.Marshal(back)
		if err != nil || !bytes.Equal(again, enc) {
			t.Fatalf("round trip changed the snapshot:\n%s\n%s", enc, again)
		}
	})
}
