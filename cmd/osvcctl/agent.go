package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
)

func (c *cli) agentCommand() *cobra.Command {
	cmd := groupCommand("agent", "Inspect, enroll and revoke the agents on the site servers")
	cmd.AddCommand(c.agentAccessCommands()...)
	cmd.AddCommand(c.agentDeleteCommand())
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List agents with their state, drives and runs",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			agents, err := c.agents()
			if err != nil {
				return err
			}
			all := &osvcv1.ListAgentsResponse{}
			token := ""
			for {
				ctx, cancel := c.callContext(cmd.Context())
				resp, err := agents.ListAgents(ctx, &osvcv1.ListAgentsRequest{PageSize: listPageSize, PageToken: token})
				cancel()
				if err != nil {
					return err
				}
				all.Agents = append(all.Agents, resp.GetAgents()...)
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, all)
			}
			t := newTable(c.stdout, "NAME", "SITE", "STATE", "HOST", "VERSION", "ENGINES", "CAPACITY", "DRIVES", "RUNS", "LAST SEEN")
			for _, a := range all.GetAgents() {
				drives := make([]string, 0, len(a.GetDrives()))
				for _, d := range a.GetDrives() {
					drives = append(drives, fmt.Sprintf("%s %s free of %s", d.GetPath(), sizeText(d.GetFreeBytes()), sizeText(d.GetTotalBytes())))
				}
				t.AppendRow([]any{a.GetName(), a.GetSite(), enumText(a.GetState().String(), "AGENT_STATE_"), orDash(a.GetHost()),
					orDash(a.GetVersion()), orDash(strings.Join(a.GetEngines(), ",")), a.GetCapacity(),
					orDash(strings.Join(drives, "\n")), orDash(strings.Join(a.GetRuns(), "\n")), timeText(a.GetLastSeenTime())})
			}
			renderList(c.stdout, t, "no agents")
			return nil
		},
	})
	return cmd
}
