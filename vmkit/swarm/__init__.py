"""Docker Swarm: nodes, services, tasks, the orchestrator and scheduler. Placeholder, filled by chapter 05_swarm (course/05_swarm/)."""
