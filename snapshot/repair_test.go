package snapshot_test

import (
	"bytes"
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
)

// repair runs RebuildIndex and RepairSnapshots as "cairn repair index"
// and "cairn repair snapshots" do, and returns the losses by path.
func repair(t *testing.T, r *repo.Repo, readData, dryRun bool) (snapshot.RepairResult, map[string]snapshot.RepairLoss) {
	t.Helper()
	ctx := context.Background()
	if !dryRun {
		if _, err := pack.RebuildIndex(ctx, r, pack.RebuildOptions{ReadData: readData}); err != nil {
			t.Fatal(err)
		}
	}
	losses := map[string]snapshot.RepairLoss{}
	res, err := snapshot.RepairSnapshots(ctx, openStore(t, r), snapshot.RepairOptions{DryRun: dryRun,
		Report: func(l snapshot.RepairLoss) { losses[l.Snapshot.Short()+":"+l.Path] = l }})
	if err != nil {
		t.Fatal(err)
	}
	return res, losses
}

// snapshotFiles returns the files of snapshot id with their contents.
func snapshotFiles(t *testing.T, r *repo.Repo, id repo.ID) (*snapshot.Snapshot, map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	sn, err := snapshot.Load(ctx, r, id)
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, r)
	files := map[string][]byte{}
	err = snapshot.Walk(ctx, store, sn.Tree, func(p string, n *snapshot.Node) error {
		if n.Type != snapshot.TypeFile {
			return nil
		}
		var b bytes.Buffer
		if err := snapshot.WriteContent(ctx, store, n, &b); err != nil {
			return err
		}
		files[p] = b.Bytes()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sn, files
}

func snapshotIDs(t *testing.T, r *repo.Repo) []repo.ID {
	t.Helper()
	var ids []repo.ID
	if err := r.ListIDs(context.Background(), repo.SnapshotFile, func(id repo.ID, _ int64) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestRepairDamagedDataPack(t *testing.T) {
	cr := newCheckRepo(t)
	cr.flipByte(t, packHandle(cr.dataAB), 100) // inside a blob of /a
	res, losses := repair(t, cr.r, true, false)
	// Only /a lost a blob; /b's was copied out of the damaged pack.
	if len(res.Repaired) != 1 || len(losses) != 1 {
		t.Fatalf("repaired %+v, losses %+v", res.Repaired, losses)
	}
	l, ok := losses[cr.sn.ID.Short()+":/a"]
	if !ok || l.Dir || !strings.Contains(l.Reason, "data blob") {
		t.Fatalf("losses %+v, want /a dropped for a data blob", losses)
	}
	if ids := snapshotIDs(t, cr.r); len(ids) != 1 || ids[0] != res.Repaired[0].New {
		t.Fatalf("snapshots %v, want only the repaired %s", ids, res.Repaired[0].New.Short())
	}
	sn, files := snapshotFiles(t, cr.r, res.Repaired[0].New)
	if !sn.Time.Equal(cr.sn.Time) || sn.Hostname != cr.sn.Hostname || !slices.Equal(sn.Tags, []string{"daily", "repaired"}) {
		t.Fatalf("repaired snapshot %+v", sn)
	}
	for _, p := range []string{"/b", "/sub/c", "/sub/d"} {
		if !bytes.Equal(files[p], cr.files[p]) {
			t.Errorf("%s: content differs after the repair", p)
		}
	}
	if _, ok := files["/a"]; ok || len(files) != 3 {
		t.Fatalf("files after the repair: %d, /a present: %v", len(files), ok)
	}
	if _, errs, notes := runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true}); len(errs)+len(notes) > 0 {
		t.Fatalf("check after the repair: %q %q", errs, notes)
	}
	// Nothing is left to repair.
	if res, losses := repair(t, cr.r, true, false); len(res.Repaired)+len(losses) > 0 {
		t.Fatalf("second repair: %+v %+v", res.Repaired, losses)
	}
}

func TestRepairLostSubtree(t *testing.T) {
	cr := newCheckRepo(t)
	// A second snapshot shares the tree: both lose the same things.
	sn2 := *cr.sn
	sn2.Time = sn2.Time.Add(1)
	if _, err := snapshot.Save(context.Background(), cr.r, &sn2); err != nil {
		t.Fatal(err)
	}
	cr.remove(t, packHandle(cr.subTree))

	// A dry run says what would go, and changes nothing.
	before := snapshotIDs(t, cr.r)
	res, losses := repair(t, cr.r, false, true)
	if len(res.Repaired) != 2 || len(losses) != 2 || !res.Repaired[0].New.IsNull() {
		t.Fatalf("dry run: %+v %+v", res.Repaired, losses)
	}
	if after := snapshotIDs(t, cr.r); !slices.Equal(before, after) {
		t.Fatal("a dry run changed the snapshots")
	}

	res, losses = repair(t, cr.r, false, false)
	for _, id := range []repo.ID{cr.sn.ID, sn2.ID} {
		l, ok := losses[id.Short()+":/sub"]
		if !ok || !l.Dir {
			t.Fatalf("snapshot %s: losses %+v, want /sub emptied", id.Short(), losses)
		}
	}
	if len(res.Repaired) != 2 || len(losses) != 2 {
		t.Fatalf("repaired %+v, losses %+v", res.Repaired, losses)
	}
	_, files := snapshotFiles(t, cr.r, res.Repaired[0].New)
	if len(files) != 2 || !bytes.Equal(files["/a"], cr.files["/a"]) || !bytes.Equal(files["/b"], cr.files["/b"]) {
		t.Fatalf("files after the repair: %v", slices.Collect(maps.Keys(files)))
	}
	if _, err := snapshot.FindNode(context.Background(), openStore(t, cr.r), &snapshot.Snapshot{Tree: mustLoad(t, cr.r, res.Repaired[0].New).Tree}, "/sub"); err != nil {
		t.Fatalf("the emptied directory is gone: %v", err)
	}
	// The pack of c and d is still there, now referenced by nothing.
	if _, errs, _ := runCheck(t, cr.r, snapshot.CheckOptions{ReadData: true}); len(errs) > 0 {
		t.Fatalf("check after the repair: %q", errs)
	}
}

func mustLoad(t *testing.T, r *repo.Repo, id repo.ID) *snapshot.Snapshot {
	t.Helper()
	sn, err := snapshot.Load(context.Background(), r, id)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

func TestRepairLostRoot(t *testing.T) {
	cr := newCheckRepo(t)
	cr.remove(t, packHandle(cr.rootTree))
	res, losses := repair(t, cr.r, false, false)
	if l, ok := losses[cr.sn.ID.Short()+":/"]; !ok || len(losses) != 1 || !l.Dir {
		t.Fatalf("losses %+v", losses)
	}
	_, files := snapshotFiles(t, cr.r, res.Repaired[0].New)
	if len(files) != 0 {
		t.Fatalf("a snapshot whose root is lost still has %d files", len(files))
	}
}

// TestRepairNeedsIndexRepair: with the index naming a pack that is gone,
// only a dry run is allowed.
func TestRepairNeedsIndexRepair(t *testing.T) {
	cr := newCheckRepo(t)
	cr.remove(t, packHandle(cr.dataCD))
	_, err := snapshot.RepairSnapshots(context.Background(), openStore(t, cr.r), snapshot.RepairOptions{})
	if err == nil || !strings.Contains(err.Error(), "repair index") {
		t.Fatalf("got %v, want a hint to repair the index first", err)
	}
	if ids := snapshotIDs(t, cr.r); len(ids) != 1 || ids[0] != cr.sn.ID {
		t.Fatal("the refused repair changed the snapshots")
	}
	_, losses := repair(t, cr.r, false, true)
	if len(losses) != 2 {
		t.Fatalf("dry run: %+v, want /sub/c and /sub/d", losses)
	}
}
