defmodule DSPyBridge.Application do
  @moduledoc false
  # The :dspy_bridge application: on every node that runs it, the `:pg`
  # scope of clustered pools (DSPyBridge.Cluster), so that a node with no pool
  # of its own still sees every pool node's workers and can route to them.
  # Pools themselves are started by the host application, in its own tree.

  use Application

  @impl true
  def start(_type, _args) do
    Supervisor.start_link([DSPyBridge.Cluster],
      strategy: :one_for_one,
      name: DSPyBridge.Supervisor
    )
  end
end
