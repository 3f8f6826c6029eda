package snapshot

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/repo"
)

// Summary is what a backup reports (cli.md, "cairn backup").
type Summary struct {
	FilesNew            int     `json:"files_new"`
	FilesChanged        int     `json:"files_changed"`
	FilesUnmodified     int     `json:"files_unmodified"`
	DirsNew             int     `json:"dirs_new"`
	DirsChanged         int     `json:"dirs_changed"`
	DirsUnmodified      int     `json:"dirs_unmodified"`
	DataBlobs           int     `json:"data_blobs"`
	TreeBlobs           int     `json:"tree_blobs"`
	DataAdded           int64   `json:"data_added"`
	DataAddedPacked     int64   `json:"data_added_packed"`
	TotalFilesProcessed int     `json:"total_files_processed"`
	TotalBytesProcessed int64   `json:"total_bytes_processed"`
	Errors              int     `json:"errors"`
	DurationSeconds     float64 `json:"duration_seconds"`
}

// Snapshot is stored under snapshots/ (docs/format.md).
type Snapshot struct {
	Version        int       `json:"version"`
	Time           time.Time `json:"time"`
	Tree           repo.ID   `json:"tree"`
	Paths          []string  `json:"paths"`
	Hostname       string    `json:"hostname"`
	Username       string    `json:"username"`
	UID            uint32    `json:"uid"`
	GID            uint32    `json:"gid"`
	Tags           []string  `json:"tags"`
	Excludes       []string  `json:"excludes,omitempty"`
	Cluster        string    `json:"cluster"`
	Component      string    `json:"component"`
	Run            string    `json:"run"`
	Parent         *repo.ID  `json:"parent"`
	ProgramVersion string    `json:"program_version"`
	Summary        *Summary  `json:"summary"`
	// Original is the ID of the snapshot this one was copied from (the
	// first one, through copies of copies); nil for a backup's own.
	Original *repo.ID `json:"original,omitempty"`

	ID repo.ID `json:"-"` // its file's id, set by Load and Save
}

// Save stores sn and sets sn.ID.
func Save(ctx context.Context, r *repo.Repo, sn *Snapshot) (repo.ID, error) {
	sn.Version = 1
	id, err := r.SaveJSON(ctx, repo.SnapshotFile, sn)
	if err != nil {
		return id, err
	}
	sn.ID = id
	return id, nil
}

// Load reads snapshot id.
func Load(ctx context.Context, r *repo.Repo, id repo.ID) (*Snapshot, error) {
	var sn Snapshot
	if err := r.LoadJSON(ctx, repo.SnapshotFile, id, &sn); err != nil {
		return nil, err
	}
	if sn.Version != 1 {
		return nil, fmt.Errorf("snapshot %s: version %d is not supported", id.Short(), sn.Version)
	}
	sn.ID = id
	return &sn, nil
}

// DecodeSnapshot parses a snapshot's plaintext (for tests and fuzzing).
func DecodeSnapshot(b []byte) (*Snapshot, error) {
	var sn Snapshot
	if err := json.Unmarshal(b, &sn); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	if sn.Version != 1 {
		return nil, fmt.Errorf("snapshot version %d is not supported", sn.Version)
	}
	return &sn, nil
}

// List loads every snapshot, oldest first. A snapshot that cannot be read
// is an error, unless skip is given: then it goes to skip and is left out,
// so that one damaged file does not stop every command.
func List(ctx context.Context, r *repo.Repo, skip func(repo.ID, error)) ([]*Snapshot, error) {
	var ids []repo.ID
	if err := r.ListIDs(ctx, repo.SnapshotFile, func(id repo.ID, _ int64) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	list := make([]*Snapshot, 0, len(ids))
	for _, id := range ids {
		sn, err := Load(ctx, r, id)
		if err != nil && skip != nil && ctx.Err() == nil {
			skip(id, err)
			continue
		}
		if err != nil {
			return nil, err
		}
		list = append(list, sn)
	}
	sort.SliceStable(list, func(i, j int) bool {
		if !list[i].Time.Equal(list[j].Time) {
			return list[i].Time.Before(list[j].Time)
		}
		return list[i].ID.String() < list[j].ID.String()
	})
	return list, nil
}

// Filter selects snapshots; empty fields match everything.
type Filter struct {
	Hosts     []string
	Tags      []string // each entry "a,b" needs both a and b; entries are alternatives
	Paths     []string // the snapshot must have all of these paths
	Cluster   string
	Component string // a glob
	Run       string
}

// Match reports whether sn passes f.
func (f Filter) Match(sn *Snapshot) bool {
	if len(f.Hosts) > 0 && !slices.Contains(f.Hosts, sn.Hostname) {
		return false
	}
	if f.Cluster != "" && sn.Cluster != f.Cluster {
		return false
	}
	if f.Component != "" {
		if ok, _ := path.Match(f.Component, sn.Component); !ok {
			return false
		}
	}
	if f.Run != "" && sn.Run != f.Run {
		return false
	}
	for _, p := range f.Paths {
		if !slices.Contains(sn.Paths, p) {
			return false
		}
	}
	if len(f.Tags) > 0 {
		any := false
		for _, group := range f.Tags {
			all := true
			for _, t := range strings.Split(group, ",") {
				if t != "" && !slices.Contains(sn.Tags, t) {
					all = false
				}
			}
			any = any || all
		}
		if !any {
			return false
		}
	}
	return true
}

// Find resolves "latest" (with f) or an id prefix to a snapshot; skip is as
// for List.
func Find(ctx context.Context, r *repo.Repo, ref string, f Filter, skip func(repo.ID, error)) (*Snapshot, error) {
	if ref != "latest" {
		id, err := r.FindID(ctx, repo.SnapshotFile, ref)
		if err != nil {
			return nil, err
		}
		return Load(ctx, r, id)
	}
	list, err := List(ctx, r, skip)
	if err != nil {
		return nil, err
	}
	for i := len(list) - 1; i >= 0; i-- {
		if f.Match(list[i]) {
			return list[i], nil
		}
	}
	return nil, fmt.Errorf("no snapshot matches: %w", repo.ErrNotFound)
}
