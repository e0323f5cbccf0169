package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/orchestrator"
)

// Encrypted repositories (docs/repository.md, "Encryption"): init and
// the key commands, and where the passphrase comes from.

// passwordFile is the root --password-file flag.
var passwordFile string

func init() {
	rootCmd.PersistentFlags().StringVar(&passwordFile, "password-file", "",
		"`file` whose first line is the passphrase of an encrypted repository ([repository] password_file) [$SENDENSE_REPOSITORY_PASSWORD_FILE]")
	rootCmd.AddCommand(newInitCommand(), newKeyCommand())
}

// applyRepositorySecrets applies --password-file over the configuration
// (flag > environment > file) and installs where encrypted repositories
// get their passphrase, and whether new repositories are encrypted.
func applyRepositorySecrets(c *config.Config) {
	if passwordFile != "" {
		c.Repository.PasswordFile, c.Repository.PasswordCredential = passwordFile, ""
	}
	rc := c.Repository
	repo.Passphrase = func(string) ([]byte, error) { return rc.Passphrase(os.Getenv) }
	repo.EncryptNew = rc.Encryption == repo.EncryptionAES256
	if rc.KeyCache != nil {
		repo.KeyCache = rc.KeyCache.Duration
	}
}

// installPassphrase makes encrypted repositories opened by cmd read
// their passphrase from its configuration, loaded when first needed (a
// command given --repo DIR may not load it otherwise).
func installPassphrase(cmd *cobra.Command) {
	repo.Passphrase = func(string) ([]byte, error) {
		c, err := loadConfig(cmd) // applies the secrets (and replaces this function)
		if err != nil {
			return nil, err
		}
		return c.Repository.Passphrase(os.Getenv)
	}
}

const initLong = `Create a repository: a new (or empty) directory, or ssh://[user@]host[:port]/path.
A backup creates its repository when there is none, so init is needed only
for an encrypted repository, or to create one ahead of the first backup.

With --encrypt (or [repository] encryption = "aes-256") the repository is
encrypted (AES-256): its images are qcow2 with LUKS encryption, its
manifests and state files are sealed, its digests are keyed. A random
master key is stored only wrapped in a key slot, opened by the passphrase
of --password-file, $SENDENSE_REPOSITORY_PASSWORD_FILE, [repository]
password_file or password_credential (a systemd credential). A passphrase
is never read from the command line. Losing every passphrase loses the
backups: add a second slot with 'sendense key add'. See docs/repository.md,
"Encryption".

EXAMPLES
  sendense init --repo /backups --encrypt --password-file /etc/sendense/repo.pass`

// initOptions are the flags of "sendense init".
type initOptions struct {
	repo    repoDirFlag
	encrypt bool
}

func newInitCommand() *cobra.Command {
	var opts initOptions
	cmd := &cobra.Command{
		Use:   "init --repo DIR [--encrypt]",
		Short: "Create a repository, encrypted with --encrypt",
		Long:  initLong,
		Args:  cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if err := opts.repo.resolve(cmd); err != nil {
				return err
			}
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			opts.encrypt = opts.encrypt || c.Repository.Encryption == repo.EncryptionAES256
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInit(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	opts.repo.register(cmd.Flags())
	cmd.Flags().BoolVar(&opts.encrypt, "encrypt", false, "encrypt the repository (AES-256; [repository] encryption = \"aes-256\")")
	return cmd
}

func runInit(ctx context.Context, opts initOptions, stdout io.Writer) error {
	var pass []byte
	if opts.encrypt {
		var err error
		if pass, err = repo.Passphrase(opts.repo.dir); err != nil {
			return usageErrorf("--encrypt: %v", err)
		}
	}
	var r *repo.Repo
	var err error
	if orchestrator.IsRemoteRepository(opts.repo.dir) {
		s := &orchestrator.Services{Config: opts.repo.config(), AcceptNewHostKey: opts.repo.tunnel.acceptNewHostKey, OnTunnelRetry: tunnelRetryStatus()}
		defer s.CloseTunnels()
		if r, err = orchestrator.OpenRepository(ctx, s, opts.repo.dir); err == nil {
			r.Close()
			return fmt.Errorf("%s is already a sendense repository", opts.repo.dir)
		}
		repo.EncryptNew = opts.encrypt
		repo.Passphrase = func(string) ([]byte, error) { return pass, nil }
		r, err = orchestrator.OpenOrInitEmptyRepository(ctx, s, opts.repo.dir)
	} else {
		r, err = repo.InitEncryptedFS(repo.Local, qemu.Default, opts.repo.dir, pass)
	}
	if err != nil {
		return err
	}
	defer r.Close()
	what := "repository"
	if r.Encrypted() {
		slots, _, _ := r.KeySlots()
		what = fmt.Sprintf("encrypted repository (AES-256, key slot %s)", slots[0].ID)
	}
	return printResult(stdout, struct {
		MessageType string `json:"message_type"`
		Repository  string `json:"repository"`
		Encrypted   bool   `json:"encrypted"`
	}{"init", r.Location(), r.Encrypted()}, fmt.Sprintf("created %s %s\n", what, r.Location()))
}

// printResult writes v as a JSON line with --json, else text.
func printResult(w io.Writer, v any, text string) error {
	if gopts.JSON {
		return json.NewEncoder(w).Encode(v)
	}
	if !gopts.Quiet {
		_, err := io.WriteString(w, text)
		return err
	}
	return nil
}

// config is the loaded configuration, or the defaults.
func (f *repoDirFlag) config() *config.Config {
	if f.cfg == nil {
		return config.Defaults()
	}
	return f.cfg
}

const keyLong = `Manage the key slots of an encrypted repository (restic's key commands are
the model). Each slot holds the repository's master key sealed under one
passphrase (scrypt, AES-256-GCM); any slot's passphrase opens the
repository. The current passphrase comes from --password-file (or its
variable, [repository] password_file or password_credential); a new one
from --new-password-file. Passphrases are never read from the command
line. The key a passphrase derives is cached in the user's kernel keyring
for [repository] key_cache (5 minutes; "0s": never): 'keyctl show @u'
lists it, 'keyctl clear @u' empties the user keyring. See
docs/repository.md, "Encryption".`

func newKeyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Manage the key slots (passphrases) of an encrypted repository",
		Long:  keyLong,
	}
	var newPass string
	newPassFlag := func(c *cobra.Command) {
		c.Flags().StringVar(&newPass, "new-password-file", "", "`file` whose first line is the new passphrase")
	}
	readNew := func() ([]byte, error) {
		if newPass == "" {
			return nil, usageErrorf("--new-password-file FILE is required")
		}
		c := config.Repository{PasswordFile: newPass}
		return c.Passphrase(os.Getenv)
	}
	sub := func(use, short string, args cobra.PositionalArgs, run func(ctx context.Context, r *repo.Repo, w io.Writer, args []string) error) *cobra.Command {
		var rf repoDirFlag
		c := &cobra.Command{
			Use: use, Short: short, Args: args,
			PreRunE: func(cmd *cobra.Command, args []string) error { return rf.resolve(cmd) },
			RunE: func(cmd *cobra.Command, args []string) error {
				r, closeRepo, err := rf.open(cmd.Context())
				if err != nil {
					return err
				}
				defer closeRepo()
				if !r.Encrypted() {
					return fmt.Errorf("repository %s is not encrypted: it has no keys", r.Location())
				}
				return run(cmd.Context(), r, cmd.OutOrStdout(), args)
			},
		}
		rf.register(c.Flags())
		return c
	}
	list := sub("list", "List the key slots", cobra.NoArgs, func(ctx context.Context, r *repo.Repo, w io.Writer, _ []string) error {
		slots, current, err := r.KeySlots()
		if err != nil {
			return err
		}
		if !gopts.JSON {
			fmt.Fprintf(w, " %-16s  %-20s  %s\n", "ID", "CREATED", "KDF")
		}
		for _, s := range slots {
			mark := " "
			if s.ID == current {
				mark = "*"
			}
			err := printResult(w, struct {
				MessageType string    `json:"message_type"`
				ID          string    `json:"id"`
				Created     time.Time `json:"created"`
				KDF         string    `json:"kdf"`
				N           int       `json:"n"`
				R           int       `json:"r"`
				P           int       `json:"p"`
				Current     bool      `json:"current"`
			}{"key", s.ID, s.Created, s.KDF, s.N, s.R, s.P, s.ID == current},
				fmt.Sprintf("%s%-16s  %-20s  %s N=%d r=%d p=%d\n", mark, s.ID, s.Created.Format("2006-01-02 15:04:05"), s.KDF, s.N, s.R, s.P))
			if err != nil {
				return err
			}
		}
		return nil
	})
	add := sub("add --new-password-file FILE", "Add a key slot opened by another passphrase", cobra.NoArgs, func(ctx context.Context, r *repo.Repo, w io.Writer, _ []string) error {
		p, err := readNew()
		if err != nil {
			return err
		}
		s, err := r.AddKey(ctx, p)
		if err != nil {
			return err
		}
		return printResult(w, map[string]string{"message_type": "key_added", "id": s.ID}, "added key slot "+s.ID+"\n")
	})
	newPassFlag(add)
	remove := sub("remove ID", "Remove a key slot (never the last one, nor the one in use)", cobra.ExactArgs(1), func(ctx context.Context, r *repo.Repo, w io.Writer, args []string) error {
		if err := r.RemoveKey(ctx, args[0]); err != nil {
			return err
		}
		return printResult(w, map[string]string{"message_type": "key_removed", "id": args[0]}, "removed key slot "+args[0]+"\n")
	})
	passwd := sub("passwd --new-password-file FILE", "Replace the key slot in use by one with a new passphrase", cobra.NoArgs, func(ctx context.Context, r *repo.Repo, w io.Writer, _ []string) error {
		p, err := readNew()
		if err != nil {
			return err
		}
		s, err := r.ChangePassphrase(ctx, p)
		if err != nil {
			return err
		}
		return printResult(w, map[string]string{"message_type": "key_changed", "id": s.ID}, "replaced the key slot in use by key slot "+s.ID+"\n")
	})
	newPassFlag(passwd)
	secret := sub("secret IMAGE", "Print the LUKS secret of an image, to open it with plain qemu-img (emergencies)", cobra.ExactArgs(1), func(ctx context.Context, r *repo.Repo, w io.Writer, args []string) error {
		s, err := r.ImageSecret(args[0])
		if err != nil {
			return err
		}
		if isTerminal(w) {
			return errors.New("refusing to print a secret to a terminal: redirect the output to a file on a tmpfs (see docs/repository.md, \"Encryption\")")
		}
		_, err = w.Write(s) // no newline: the file is the secret
		return err
	})
	secret.Long = `Print the LUKS secret of image IMAGE (a file name of the repository, e.g.
20240501T120000Z-disk2000.qcow2) on standard output, without a newline, so
that qemu-img or qemu-nbd open it without sendense:

  umask 077; sendense key secret --repo R IMAGE > /dev/shm/s
  qemu-img convert --object secret,id=s0,file=/dev/shm/s \
    --image-opts driver=qcow2,encrypt.key-secret=s0,file.filename=R/VM/IMAGE -O raw disk.raw
  rm /dev/shm/s

Each image of a chain has its own secret. The secret gives access to the
image's data: keep it off disks, and remove it after use.`
	cmd.AddCommand(list, add, remove, passwd, secret)
	return cmd
}
