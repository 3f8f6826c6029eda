package snapshot_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
)

// usrTree is a directory like those of a system's /usr: 100 files of one
// or two blobs, a few symlinks and subdirectories.
func usrTree() *snapshot.Tree {
	t := &snapshot.Tree{}
	at := time.Date(2026, 11, 2, 14, 3, 7, 123456789, time.UTC)
	for i := range 100 {
		n := &snapshot.Node{
			Name: snapshot.Name(fmt.Sprintf("libexample-%03d.so.1.2.%d", i, i)), Type: snapshot.TypeFile,
			Mode: 0o644, User: "root", Group: "root", Size: uint64(1000 + 7919*i),
			ModTime: at, ATime: at.Add(time.Hour), CTime: at.Add(time.Minute),
			Inode: uint64(1_000_000 + i), DeviceID: 2049, Links: 1,
		}
		for j := range 1 + i%2 {
			var id repo.ID
			id[0], id[1], id[31] = byte(i), byte(j), 7
			n.Content = append(n.Content, id)
		}
		switch {
		case i%10 == 3:
			n.Type, n.Size, n.Content, n.Link = snapshot.TypeSymlink, 11, nil, snapshot.Name("libexample.so")
		case i%25 == 7:
			var id repo.ID
			id[0] = byte(i)
			n.Type, n.Size, n.Content, n.Subtree = snapshot.TypeDir, 0, nil, &id
		}
		t.Nodes = append(t.Nodes, n)
	}
	return t
}

func BenchmarkDecodeTree(b *testing.B) {
	blob, err := usrTree().Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(blob)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := snapshot.DecodeTree(blob); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeTree(b *testing.B) {
	t := usrTree()
	blob, err := t.Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(blob)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := t.Encode(); err != nil {
			b.Fatal(err)
		}
	}
}
