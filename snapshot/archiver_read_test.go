package snapshot_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"golang.org/x/sys/unix"
)

// countingReader counts the reads made of it.
type countingReader struct {
	r     io.Reader
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	return c.r.Read(p)
}

// A small file is stored whole however its reads come back and whatever
// stat said of its size, and a file read whole in one call that matches
// its stat size costs that one call.
func TestReadSmall(t *testing.T) {
	ctx := context.Background()
	store := newMemStore(t)

	data := make([]byte, 3000)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(data)
	for _, tc := range []struct {
		name      string
		r         io.Reader
		statSize  uint64
		want      []byte
		wantReads int // 0: not checked
	}{
		{"read at once", bytes.NewReader(data), 3000, data, 1},
		{"short reads", iotest.OneByteReader(bytes.NewReader(data)), 3000, data, 0},
		{"grown since stat", bytes.NewReader(data), 1000, data, 0},
		{"shrunk since stat", bytes.NewReader(data), 5000, data, 0},
		{"read at once, then an error", iotest.DataErrReader(bytes.NewReader(data)), 3000, data, 0},
		{"empty", bytes.NewReader(nil), 0, nil, 0},
		{"emptied since stat", bytes.NewReader(nil), 3000, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cr := &countingReader{r: tc.r}
			var content []repo.ID
			var size int64
			err := store.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
				var readErr, err error
				content, size, readErr, err = snapshot.ReadSmall(ctx, store, cr, tc.statSize)
				if readErr != nil {
					return readErr
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if size != int64(len(tc.want)) {
				t.Fatalf("size %d, want %d", size, len(tc.want))
			}
			var got []byte
			for _, id := range content {
				b, err := store.LoadBlob(ctx, repo.DataBlob, id, nil)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, b...)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("stored %d bytes, not the file's %d", len(got), len(tc.want))
			}
			if tc.wantReads > 0 && cr.reads != tc.wantReads {
				t.Fatalf("%d reads, want %d", cr.reads, tc.wantReads)
			}
		})
	}
}

// A directory whose entries take several getdents calls is listed whole.
func TestReadDirNamesMany(t *testing.T) {
	dir := t.TempDir()
	want := map[string]bool{}
	for i := range 3000 {
		name := fmt.Sprintf("%04d-%s", i, strings.Repeat("n", 60))
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		want[name] = true
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	names, err := snapshot.ReadDirNames(fd)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != len(want) {
		t.Fatalf("%d names, want %d", len(names), len(want))
	}
	for _, n := range names {
		if !want[n] {
			t.Fatalf("unexpected name %q", n)
		}
		delete(want, n)
	}
}
