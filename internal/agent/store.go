package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// StoreFile is the job history's file name in [api] state_dir.
const StoreFile = "agent.db"

const storeVersion = "1"

var (
	bucketJobs = []byte("jobs") // job id → Job (JSON); ids sort by creation time
	bucketMeta = []byte("meta") // "version" → storeVersion
)

// store is the job history: a bbolt file (one writer at a time, every
// update fsynced; its file lock also keeps a second agent off the same
// state directory).
type store struct {
	db   *bolt.DB
	path string
}

// openStore opens (or creates) dir/agent.db.
func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("[api] state_dir: %w", err)
	}
	path := filepath.Join(dir, StoreFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("job store %s is locked: another sendense serve uses [api] state_dir %s; stop it or give another --state-dir", path, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("opening the job store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get([]byte("version")); v != nil && string(v) != storeVersion {
			return fmt.Errorf("version %s, this sendense understands %s: upgrade sendense or use another state_dir", v, storeVersion)
		}
		if err := meta.Put([]byte("version"), []byte(storeVersion)); err != nil {
			return err
		}
		_, err = tx.CreateBucketIfNotExists(bucketJobs)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("job store %s: %w", path, err)
	}
	return &store{db: db, path: path}, nil
}

// put writes a job's record.
func (s *store) put(j *Job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("job %s: %w", j.ID, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).Put([]byte(j.ID), b)
	})
	if err != nil {
		return fmt.Errorf("writing job %s to %s: %w", j.ID, s.path, err)
	}
	return nil
}

// load returns every job, oldest first. Records that cannot be decoded
// are skipped and reported in bad.
func (s *store) load() (jobs []*Job, bad []string, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			var j Job
			if err := json.Unmarshal(v, &j); err != nil || j.ID != string(k) {
				bad = append(bad, string(k))
				return nil
			}
			jobs = append(jobs, &j)
			return nil
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reading the job store %s: %w", s.path, err)
	}
	return jobs, bad, nil
}

// delete removes jobs from the history.
func (s *store) delete(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJobs)
		for _, id := range ids {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pruning the job store %s: %w", s.path, err)
	}
	return nil
}

func (s *store) close() error { return s.db.Close() }
