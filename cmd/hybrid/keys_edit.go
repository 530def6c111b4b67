package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/hybridconn/hybrid/internal/safefile"
	"github.com/hybridconn/hybrid/rules"
)

// keysRotateCommand is `hybrid keys rotate`: replace one value of a relay
// key rule in the config file, in place.
func keysRotateCommand() *cobra.Command {
	var file, conn, rule, slot, value string
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Replace one value of a relay key rule in the config, keeping live streams",
		Long: `Replace the primary or secondary value of a key rule in the relay's config file,
in place: comments and layout are kept, and the running relay applies it on
its next reload. A rotation keeps live streams: those whose client proves the
rule's current value on its control channel (hybrid agents and proxies do so
as soon as their own config has the new value) live on, the others end after
relay.rotation_grace. Use "hybrid keys revoke" to cut at once instead.

The new value (a fresh random 256-bit key unless --value is given) is printed
once on stdout. A value given as primary_file is written to that file; one
given as ${VAR} cannot be changed here.

The routine rollover, with no stream dropped:
  1. give clients the secondary value; they switch to it
  2. hybrid keys rotate --slot primary        (clients on the old primary get the grace)
  3. give clients the new primary; they switch back
  4. hybrid keys rotate --slot secondary      (when the secondary should change too)`,
		Example: "  hybrid keys rotate --config relay.yaml --connection postgres --rule apps --slot primary",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rule == "" || slot == "" {
				return configErr(errors.New("keys rotate: --rule and --slot are required"))
			}
			if value == "" {
				var b [32]byte
				if _, err := rand.Read(b[:]); err != nil {
					return runtimeErr(err)
				}
				value = base64.StdEncoding.EncodeToString(b[:])
			}
			ref := rules.KeyRef{Connection: conn, Rule: rule}
			res, err := editConfigFile(file, func(src []byte) ([]byte, rules.KeyEdit, error) {
				return rules.RotateKey(src, filepath.Dir(file), ref, slot, value)
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), value)
			w := cmd.ErrOrStderr()
			where := file + ": " + res.Field
			if res.File != "" {
				where = res.File + " (" + res.Field + ")"
			}
			fmt.Fprintf(w, "rotated the %s value of %s in %s\n", slot, ref, where)
			for _, n := range res.Notes {
				fmt.Fprintln(w, "note: "+n)
			}
			fmt.Fprintf(w, `next: the relay applies it on reload (now, if it watches the file; else SIGHUP).
  Clients still on the old %s keep their streams for relay.rotation_grace; give them
  the new value (key: or key_file: of their connection with key_name %s) and they
  re-prove it at once.
`, slot, rule)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "config", defaultConfigPath, "the relay's config file to edit")
	cmd.Flags().StringVar(&conn, "connection", "", "hybrid connection holding the rule (empty: a namespace rule, relay.keys)")
	cmd.Flags().StringVar(&rule, "rule", "", "key rule name")
	cmd.Flags().StringVar(&slot, "slot", "", "primary or secondary")
	cmd.Flags().StringVar(&value, "value", "", "the new value (default: a fresh random key)")
	return cmd
}

// keysRevokeCommand is `hybrid keys revoke`: remove a rule or one of its
// values with revocation semantics.
func keysRevokeCommand() *cobra.Command {
	var file, conn, rule, slot string
	cmd := &cobra.Command{
		Use:   "revoke",
		Short: "Remove a relay key rule, or one of its values, cutting what it authenticated",
		Long: `Remove a key rule (no --slot) or one of its values (--slot primary|secondary)
from the relay's config file, in place. A removed value is marked revoke: true
on its rule, so that the relay ends, within a second of its reload, every
stream and attachment the value authenticated. Revoking the primary promotes
the secondary; revoking a rule's only value removes the rule.`,
		Example: "  hybrid keys revoke --config relay.yaml --connection postgres --rule apps --slot secondary",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if rule == "" {
				return configErr(errors.New("keys revoke: --rule is required"))
			}
			ref := rules.KeyRef{Connection: conn, Rule: rule}
			res, err := editConfigFile(file, func(src []byte) ([]byte, rules.KeyEdit, error) {
				return rules.RevokeKey(src, ref, slot)
			})
			if err != nil {
				return err
			}
			what := "the whole rule"
			if slot != "" {
				what = "its " + slot + " value"
			}
			w := cmd.ErrOrStderr()
			fmt.Fprintf(w, "revoked %s of %s in %s (%s)\n", what, ref, file, res.Field)
			for _, n := range res.Notes {
				fmt.Fprintln(w, "note: "+n)
			}
			fmt.Fprintln(w, "next: the relay applies it on reload (now, if it watches the file; else SIGHUP) and cuts what it authenticated.")
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "config", defaultConfigPath, "the relay's config file to edit")
	cmd.Flags().StringVar(&conn, "connection", "", "hybrid connection holding the rule (empty: a namespace rule, relay.keys)")
	cmd.Flags().StringVar(&rule, "rule", "", "key rule name")
	cmd.Flags().StringVar(&slot, "slot", "", "primary or secondary (empty: the whole rule)")
	return cmd
}

// editConfigFile applies edit to the config file at path, checks that the
// result is a valid config, and replaces the file atomically (same mode),
// so that a watching relay reloads it once.
func editConfigFile(path string, edit func([]byte) ([]byte, rules.KeyEdit, error)) (rules.KeyEdit, error) {
	src, err := safefile.Read(path, safefile.MaxConfig)
	if err != nil {
		return rules.KeyEdit{}, configErr(fmt.Errorf("cannot read %s: %w", path, err))
	}
	out, res, err := edit(src)
	if err != nil {
		return res, configErr(fmt.Errorf("%s: %w", path, err))
	}
	if _, err := rules.Parse(path, out); err != nil {
		return res, configErr(fmt.Errorf("%s: the edited file would not be valid, left unchanged:\n%w", path, err))
	}
	if string(out) == string(src) {
		return res, nil // the value lived in a file of its own
	}
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return res, runtimeErr(err)
	}
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(target); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".edit-*")
	if err != nil {
		return res, runtimeErr(fmt.Errorf("cannot write beside %s: %w", target, err))
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out); err == nil {
		err = tmp.Chmod(mode)
	}
	if err := tmp.Close(); err != nil {
		return res, runtimeErr(err)
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return res, runtimeErr(fmt.Errorf("cannot replace %s: %w", target, err))
	}
	return res, nil
}
