-- Step 3: all rows, all columns.
SELECT * FROM Agents ORDER BY AgentId
