package snapshot_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
)

// A tree stays whole when more trees are loaded after it: their plaintext
// shares buffers, and nothing of a decoded tree may point into one. Tree
// blobs come from the repository and, once cached, from the cache.
func TestLoadedTreesKeepTheirContent(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	store.Repo().SetCache(repo.NewFileCache(t.TempDir()))
	tree := func(i int) *snapshot.Tree {
		owner := fmt.Sprintf("user%04d", i)
		return &snapshot.Tree{Nodes: []*snapshot.Node{
			{Name: snapshot.Name(fmt.Sprintf("name-%04d", i)), Type: snapshot.TypeSymlink, Mode: 0o777,
				User: owner, Group: owner, Link: snapshot.Name(fmt.Sprintf("target-%04d", i)),
				Xattrs: []snapshot.Xattr{{Name: snapshot.Name(fmt.Sprintf("user.x%04d", i)), Value: []byte(owner)}}},
		}}
	}
	var ids []repo.ID
	err := store.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		for i := range 20 {
			id, err := snapshot.SaveTree(ctx, store, tree(i))
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 2 { // the second round reads the cached packs
		var got []*snapshot.Tree
		for _, id := range ids {
			tr, err := snapshot.LoadTree(ctx, store, id)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, tr)
		}
		for i, tr := range got {
			if want := tree(i); !reflect.DeepEqual(tr, want) {
				t.Fatalf("round %d: tree %d reads %+v after the others were loaded, want %+v", round, i, *tr.Nodes[0], *want.Nodes[0])
			}
		}
	}
}
